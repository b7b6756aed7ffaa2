//! Reading a whole store, page by page: what `export`, `copy` and its verification use.
//! Each page starts after the previous page's last key (the keyset cursor), so memory
//! stays at one page and the last page costs what the first does.

use super::{
    Cursor, MeshQuery, Page, PageRequest, PageStart, Result, SecretQuery, SecretScope, SecretStore,
};
use crate::domain::{Mesh, Secret};

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

impl Walk for SecretWalk {
    type Item = Secret;
    async fn next_items<S: SecretStore>(&mut self, store: &S) -> Result<Option<Vec<Secret>>> {
        Ok(self.next_page(store).await?.map(|page| page.items))
    }
}

impl Walk for MeshWalk {
    type Item = Mesh;
    async fn next_items<S: SecretStore>(&mut self, store: &S) -> Result<Option<Vec<Mesh>>> {
        Ok(self.next_page(store).await?.map(|page| page.items))
    }
}

/// Every Secret (or GlobalSecret) of a scope, in (mesh, name) order.
#[derive(Debug)]
pub struct SecretWalk {
    query: SecretQuery,
    finished: bool,
}

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

    /// The next page, `None` after the last; the first page's `total` tells the size.
    ///
    /// # Errors
    /// Whatever the store returns.
    pub async fn next_page<S: SecretStore>(&mut self, store: &S) -> Result<Option<Page<Secret>>> {
        if self.finished {
            return Ok(None);
        }
        let page = store.list_secrets(&self.query).await?;
        self.finished = advance(&mut self.query.page, page.next.as_ref())?;
        Ok(Some(page))
    }
}

/// Every Mesh, in name order.
#[derive(Debug)]
pub struct MeshWalk {
    query: MeshQuery,
    finished: bool,
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

    /// The next page, `None` after the last.
    ///
    /// # Errors
    /// Whatever the store returns.
    pub async fn next_page<S: SecretStore>(&mut self, store: &S) -> Result<Option<Page<Mesh>>> {
        if self.finished {
            return Ok(None);
        }
        let page = store.list_meshes(&self.query).await?;
        self.finished = advance(&mut self.query.page, page.next.as_ref())?;
        Ok(Some(page))
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
