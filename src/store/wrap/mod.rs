//! The wrappers: stores that wrap another [`SecretStore`](super::contract::SecretStore) and
//! change some of what it does (the read cache, the read replica, the watch), each passing
//! the rest on with `forward_store_methods!`. They depend on the contract only, never on
//! a backend.

pub mod cache;
pub mod replica;
pub mod watch;

/// Writes the [`SecretStore`] methods a wrapper passes on unchanged to the store it wraps,
/// `self.<target>` (a field, or a method that returns the store), so a wrapper spells out
/// only the methods it changes:
///
/// - `forward_store_methods! { [inner] fn get_mesh(name: &MeshName) -> Mesh; … }` calls
///   `self.inner.get_mesh(name)`;
/// - `[primary] through writing` wraps each call as `self.writing(self.primary.m(…))`;
/// - `[inner] through timed(name)` as `self.timed("m", self.inner.m(…))`.
macro_rules! forward_store_methods {
    (@one [$($target:tt)+] through $wrap:ident(name) $name:ident($($arg:ident: $ty:ty),*) $ret:ty) => {
        async fn $name(&self, $($arg: $ty),*) -> $crate::store::contract::Result<$ret> {
            self.$wrap(stringify!($name), self.$($target)+.$name($($arg),*)).await
        }
    };
    (@one [$($target:tt)+] through $wrap:ident $name:ident($($arg:ident: $ty:ty),*) $ret:ty) => {
        async fn $name(&self, $($arg: $ty),*) -> $crate::store::contract::Result<$ret> {
            self.$wrap(self.$($target)+.$name($($arg),*)).await
        }
    };
    (@one [$($target:tt)+] $name:ident($($arg:ident: $ty:ty),*) $ret:ty) => {
        async fn $name(&self, $($arg: $ty),*) -> $crate::store::contract::Result<$ret> {
            self.$($target)+.$name($($arg),*).await
        }
    };
    ($target:tt through $wrap:ident(name) $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)+) => {
        $($crate::store::wrap::forward_store_methods!(@one $target through $wrap(name) $name($($arg: $ty),*) $ret);)+
    };
    ($target:tt through $wrap:ident $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)+) => {
        $($crate::store::wrap::forward_store_methods!(@one $target through $wrap $name($($arg: $ty),*) $ret);)+
    };
    ($target:tt $(fn $name:ident($($arg:ident: $ty:ty),*) -> $ret:ty;)+) => {
        $($crate::store::wrap::forward_store_methods!(@one $target $name($($arg: $ty),*) $ret);)+
    };
}
pub(crate) use forward_store_methods;
