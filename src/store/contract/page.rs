//! List queries and pagination.
//!
//! A page starts either at an offset (Kuma's `offset=N`, SQL `OFFSET`) or after a
//! [`Cursor`]: the key of the last item seen, so the next page is an index seek
//! (`(mesh, name) > (…)`) and costs the same at the end of 100,000 secrets as at the start.

use super::StoreError;
use crate::domain::{MeshName, ValidationError};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use std::collections::BTreeMap;

/// Page size when the caller gives none (Kuma's default).
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Largest page size (Kuma's limit).
pub const MAX_PAGE_SIZE: u32 = 1000;

/// Where a page starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PageStart {
    /// Skip this many matching items (Kuma's `offset`).
    Offset(u64),
    /// Start right after the item the cursor names.
    After(Cursor),
}

/// Which page of a list to return.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    size: u32,
    start: PageStart,
}

impl PageRequest {
    /// The page of `size` items starting at `start`.
    ///
    /// # Errors
    /// Kuma's page-size messages for 0 or more than [`MAX_PAGE_SIZE`].
    pub fn new(size: u32, start: PageStart) -> Result<Self, ValidationError> {
        if size == 0 {
            return Err(ValidationError::single("size", "must be greater than 0"));
        }
        if size > MAX_PAGE_SIZE {
            return Err(ValidationError::single(
                "size",
                format!("invalid page size of {size}. Maximum page size is {MAX_PAGE_SIZE}"),
            ));
        }
        Ok(Self { size, start })
    }

    /// The first page of `size` items.
    ///
    /// # Errors
    /// See [`PageRequest::new`].
    pub fn first(size: u32) -> Result<Self, ValidationError> {
        Self::new(size, PageStart::Offset(0))
    }

    /// Page size.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// Where the page starts.
    pub fn start(&self) -> &PageStart {
        &self.start
    }

    /// The offset of the page's first item (informational for cursor pages).
    pub fn offset(&self) -> u64 {
        match &self.start {
            PageStart::Offset(offset) => *offset,
            PageStart::After(cursor) => cursor.offset,
        }
    }
}

impl Default for PageRequest {
    fn default() -> Self {
        Self {
            size: DEFAULT_PAGE_SIZE,
            start: PageStart::Offset(0),
        }
    }
}

/// Names the last item of a page, and the offset of the item after it. Opaque to clients:
/// [`Cursor::encode`] and [`Cursor::decode`] turn it into a URL-safe token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    /// Offset of the first item after the cursor (what Kuma's `offset` would say).
    pub offset: u64,
    /// Mesh of the last item seen (`None` for global secrets and meshes).
    pub mesh: Option<String>,
    /// Name of the last item seen.
    pub name: String,
}

impl Cursor {
    /// The URL-safe token for this cursor.
    pub fn encode(&self) -> String {
        let raw = format!(
            "{}\n{}\n{}",
            self.offset,
            self.mesh.as_deref().map_or("-", |m| m),
            self.name
        );
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// Parses a token made by [`Cursor::encode`].
    ///
    /// # Errors
    /// [`StoreError::Invalid`] (field `cursor`) for anything else.
    pub fn decode(token: &str) -> Result<Self, StoreError> {
        let invalid = || {
            StoreError::Invalid(ValidationError::single(
                "cursor",
                "invalid cursor: use the `next` link of the previous page",
            ))
        };
        let raw = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
        let raw = String::from_utf8(raw).map_err(|_| invalid())?;
        let mut parts = raw.splitn(3, '\n');
        let (Some(offset), Some(mesh), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(invalid());
        };
        // An offset must fit SQL's BIGINT (and leave room for the pages after it); names
        // never hold NUL, which Postgres could not compare.
        let offset: u64 = offset.parse().map_err(|_| invalid())?;
        if offset > i64::MAX as u64 / 2 || raw.contains('\0') {
            return Err(invalid());
        }
        Ok(Self {
            offset,
            mesh: (mesh != "-").then(|| mesh.to_owned()),
            name: name.to_owned(),
        })
    }
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct Page<T> {
    /// The items, sorted by (mesh, name).
    pub items: Vec<T>,
    /// How many items match the query in all (not just this page).
    pub total: u64,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
}

/// Which secrets a list covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretScope {
    /// Secrets of one Mesh.
    Mesh(MeshName),
    /// Secrets of every Mesh (Kuma's `GET /secrets`), not GlobalSecrets.
    AllMeshes,
    /// GlobalSecrets.
    Global,
}

/// A secret list query: scope, filters and page.
#[derive(Debug, Clone)]
pub struct SecretQuery {
    /// Which secrets.
    pub scope: SecretScope,
    /// Only names containing this substring (matched literally, `%` and `_` included).
    pub name_contains: Option<String>,
    /// Only secrets carrying every one of these labels with exactly these values.
    pub labels: BTreeMap<String, String>,
    /// Which page.
    pub page: PageRequest,
    /// The number of matches, when the caller already knows it (the read cache keeps the
    /// totals of recent lists): the store then returns it as the page's `total` instead of
    /// counting every match again, the bulk of a page's cost on a large store.
    pub known_total: Option<u64>,
}

impl SecretQuery {
    /// All secrets in `scope`, first page of the default size.
    pub fn new(scope: SecretScope) -> Self {
        Self {
            scope,
            name_contains: None,
            labels: BTreeMap::new(),
            page: PageRequest::default(),
            known_total: None,
        }
    }

    /// Restricts to names containing `part`.
    pub fn name_contains(mut self, part: impl Into<String>) -> Self {
        self.name_contains = Some(part.into());
        self
    }

    /// Restricts to secrets with label `key` = `value`.
    pub fn label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// Selects the page.
    pub fn page(mut self, page: PageRequest) -> Self {
        self.page = page;
        self
    }
}

/// A Mesh list query.
#[derive(Debug, Clone, Default)]
pub struct MeshQuery {
    /// Only names containing this substring.
    pub name_contains: Option<String>,
    /// Only Meshes carrying all of these labels.
    pub labels: BTreeMap<String, String>,
    /// Which page.
    pub page: PageRequest,
}

/// An ExternalService list query.
#[derive(Debug, Clone, Default)]
pub struct ExternalServiceQuery {
    /// Only this Mesh's; `None`: every Mesh's, sorted by (mesh, name).
    pub mesh: Option<crate::domain::MeshName>,
    /// Only names containing this substring.
    pub name_contains: Option<String>,
    /// Only ExternalServices carrying all of these labels.
    pub labels: BTreeMap<String, String>,
    /// Which page.
    pub page: PageRequest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        for cursor in [
            Cursor {
                offset: 200,
                mesh: Some("default".into()),
                name: "a.b".into(),
            },
            Cursor {
                offset: 0,
                mesh: None,
                name: "gs".into(),
            },
        ] {
            assert_eq!(Cursor::decode(&cursor.encode()).unwrap(), cursor);
        }
        for garbage in ["", "!!", "bm90aGluZw", &URL_SAFE_NO_PAD.encode("x\n-\nn")] {
            assert!(matches!(
                Cursor::decode(garbage),
                Err(StoreError::Invalid(_))
            ));
        }
    }

    #[test]
    fn page_sizes_are_bounded_with_kumas_messages() {
        assert_eq!(
            PageRequest::first(0).unwrap_err().to_string(),
            "size: must be greater than 0"
        );
        assert_eq!(
            PageRequest::first(2000).unwrap_err().to_string(),
            "size: invalid page size of 2000. Maximum page size is 1000"
        );
        assert_eq!(PageRequest::first(1000).unwrap().size(), 1000);
    }
}
