//! Reading a whole store, page by page: what `export`, `copy` and its verification use.
//! Each page starts after the previous page's last key (the keyset cursor), so memory
//! stays at one page and the last page costs what the first does.

use super::{
    Cursor, ExternalServiceQuery, MeshQuery, Page, PageRequest, PageStart, Result, SecretQuery,
    SecretScope, SecretStore,
};
use crate::domain::{ExternalService, Mesh, Secret};

/// A page-by-page walk over a store, in key order: what [`SecretWalk`] and [`MeshWalk`]
/// share, so code comparing two stores is written once.
pub trait Walk {
    /// What the walk yields.
    type Item;
    /// The next page's items, `None` after the last page.
    fn next_items<S: SecretStore>(
        &mut self,
        store: &S,
    ) -> impl std::future::Future<Output = Result<Option<Vec<Self::Item>>>> + Send;
}

/// A list query a [`PageWalk`] can run page after page.
pub trait WalkQuery: Send + Sync {
    /// What a page holds.
    type Item: Send;
    /// The page the query asks for.
    fn page_mut(&mut self) -> &mut PageRequest;
    /// Runs the query.
    fn list<S: SecretStore>(
        &self,
        store: &S,
    ) -> impl std::future::Future<Output = Result<Page<Self::Item>>> + Send;
}

/// `WalkQuery` for a query type whose `page` field pages it and whose store method lists it.
macro_rules! walk_query {
    ($query:ty => $item:ty, $list:ident) => {
        impl WalkQuery for $query {
            type Item = $item;
            fn page_mut(&mut self) -> &mut PageRequest {
                &mut self.page
            }
            fn list<S: SecretStore>(
                &self,
                store: &S,
            ) -> impl std::future::Future<Output = Result<Page<$item>>> + Send {
                store.$list(self)
            }
        }
    };
}

walk_query!(SecretQuery => Secret, list_secrets);
walk_query!(MeshQuery => Mesh, list_meshes);
walk_query!(ExternalServiceQuery => ExternalService, list_external_services);

/// The pages of one list query, each starting after the previous page's last key.
#[derive(Debug)]
pub struct PageWalk<Q> {
    query: Q,
    finished: bool,
}

/// Every Secret (or GlobalSecret) of a scope, in (mesh, name) order.
pub type SecretWalk = PageWalk<SecretQuery>;

/// Every Mesh, in name order.
pub type MeshWalk = PageWalk<MeshQuery>;

impl SecretWalk {
    /// A walk over `scope` in pages of `page_size` (1 to 1000).
    ///
    /// # Errors
    /// [`super::StoreError::Invalid`] for a page size out of range.
    pub fn new(scope: SecretScope, page_size: u32) -> Result<Self> {
        Ok(Self {
            query: SecretQuery::new(scope).page(PageRequest::first(page_size)?),
            finished: false,
        })
    }
}

impl MeshWalk {
    /// A walk in pages of `page_size` (1 to 1000).
    ///
    /// # Errors
    /// [`super::StoreError::Invalid`] for a page size out of range.
    pub fn new(page_size: u32) -> Result<Self> {
        Ok(Self {
            query: MeshQuery {
                page: PageRequest::first(page_size)?,
                ..MeshQuery::default()
            },
            finished: false,
        })
    }
}

/// Every ExternalService of every Mesh, in (mesh, name) order.
pub type ExternalServiceWalk = PageWalk<ExternalServiceQuery>;

impl ExternalServiceWalk {
    /// A walk in pages of `page_size` (1 to 1000).
    ///
    /// # Errors
    /// [`super::StoreError::Invalid`] for a page size out of range.
    pub fn new(page_size: u32) -> Result<Self> {
        Ok(Self {
            query: ExternalServiceQuery {
                page: PageRequest::first(page_size)?,
                ..ExternalServiceQuery::default()
            },
            finished: false,
        })
    }
}

impl<Q: WalkQuery> PageWalk<Q> {
    /// A walk over `query`'s pages, from the page it asks for.
    pub fn of(query: Q) -> Self {
        Self {
            query,
            finished: false,
        }
    }

    /// The next page, `None` after the last; the first page's `total` tells the size.
    ///
    /// # Errors
    /// Whatever the store returns.
    pub async fn next_page<S: SecretStore>(&mut self, store: &S) -> Result<Option<Page<Q::Item>>> {
        if self.finished {
            return Ok(None);
        }
        let page = self.query.list(store).await?;
        self.finished = advance(self.query.page_mut(), page.next.as_ref())?;
        Ok(Some(page))
    }
}

impl<Q: WalkQuery> PageWalk<Q> {
    /// Every item of every page, each mapped by `keep` (the whole list in memory: for
    /// what is small per item, such as keys).
    ///
    /// # Errors
    /// Whatever the store returns.
    pub async fn collect<S: SecretStore, T>(
        mut self,
        store: &S,
        mut keep: impl FnMut(Q::Item) -> T,
    ) -> Result<Vec<T>> {
        let mut kept = Vec::new();
        while let Some(page) = self.next_page(store).await? {
            kept.extend(page.items.into_iter().map(&mut keep));
        }
        Ok(kept)
    }
}

impl<Q: WalkQuery> Walk for PageWalk<Q> {
    type Item = Q::Item;
    async fn next_items<S: SecretStore>(&mut self, store: &S) -> Result<Option<Vec<Q::Item>>> {
        Ok(self.next_page(store).await?.map(|page| page.items))
    }
}

/// Moves `page` to start after `next`; `true` (finished) when there is no next page.
fn advance(page: &mut PageRequest, next: Option<&Cursor>) -> Result<bool> {
    match next {
        Some(cursor) => {
            *page = PageRequest::new(page.size(), PageStart::After(cursor.clone()))?;
            Ok(false)
        }
        None => Ok(true),
    }
}
