//! Rebuilds the crate when a migration is added: `sqlx::migrate!` embeds `migrations/` at
//! compile time, and without this Cargo does not notice a new file there.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
