//! List query parameters and `next` links, as Kuma's `pagination.go` and `filtering.go`:
//! `size` (default 100, at most 1000), `offset` (an item index), `name` (substring) and
//! `filter[labels.KEY]=VALUE` (exact, ANDed).
//!
//! Beyond Kuma: `next` links also carry `cursor`, the key of the page's last item, so the
//! server seeks straight to the next page (an index range scan) instead of skipping
//! `offset` rows. Kuma clients that only read `offset` keep working.

use super::AppState;
use super::error::{ApiError, ApiResult};
use crate::domain::ValidationError;
use crate::store::{self, Cursor, DEFAULT_PAGE_SIZE, Page, PageRequest, PageStart, SecretStore};
use crate::wire::ListBody;
use axum::Json;
use axum::extract::{FromRequestParts, MatchedPath};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;

const TITLE: &str = "Could not retrieve resources";

/// The header every list answer carries: the change-feed revision it reflects, to follow
/// the feed from (`GET /_changes?after=…`) with no gap.
pub const REVISION_HEADER: &str = "kuma-secrets-revision";

/// Parsed list parameters.
#[derive(Debug)]
pub struct ListParams {
    /// Which page.
    pub page: PageRequest,
    /// `name` substring filter.
    pub name: Option<String>,
    /// `filter[labels.KEY]=VALUE` filters.
    pub labels: BTreeMap<String, String>,
    /// Every parameter as given, to carry into the `next` link.
    pairs: Vec<(String, String)>,
}

fn bad(detail: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, TITLE, detail)
}

/// Parses a list request's query string; `route` is the matched route template, which
/// Kuma names in a bad filter's field (`/meshes/{mesh}/secrets.filter[x]`).
///
/// # Errors
/// 400 with Kuma's messages for a bad size, offset or filter.
pub fn parse(query: Option<&str>, route: &str) -> Result<ListParams, ApiError> {
    let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    // Postgres cannot compare text holding NUL: refuse it here, on every backend alike.
    if let Some((key, _)) = pairs
        .iter()
        .find(|(k, v)| k.contains('\0') || v.contains('\0'))
    {
        return Err(ApiError::invalid(
            TITLE,
            ValidationError::single(key.replace('\0', "\\0"), crate::domain::NUL_REASON),
        ));
    }
    let get = |key: &str| {
        pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    };

    let size = match get("size") {
        None | Some("") => DEFAULT_PAGE_SIZE,
        Some(raw) => {
            let invalid = |reason: &str| {
                ApiError::invalid(TITLE, ValidationError::single("size", reason))
                    .with_detail("Invalid page size")
            };
            let n: i64 = raw.parse().map_err(|_| invalid("invalid format"))?;
            if n <= 0 {
                return Err(invalid("must be greater than 0"));
            }
            u32::try_from(n).unwrap_or(u32::MAX)
        }
    };
    let start = if let Some(token) = get("cursor").filter(|t| !t.is_empty()) {
        PageStart::After(Cursor::decode(token).map_err(|_| {
            bad("invalid: invalid cursor: use the `next` link of the previous page")
        })?)
    } else {
        match get("offset") {
            None | Some("") => PageStart::Offset(0),
            Some(raw) => {
                let offset: i64 = raw.parse().map_err(|_| {
                    bad(format!(
                        "invalid: invalid offset: parsing {raw:?}: invalid syntax"
                    ))
                })?;
                if offset < 0 {
                    return Err(bad("invalid: invalid offset: must be non-negative"));
                }
                PageStart::Offset(offset as u64)
            }
        }
    };
    let page = PageRequest::new(size, start)
        .map_err(|e| ApiError::invalid(TITLE, e).with_detail("Invalid page size"))?;

    let mut labels = BTreeMap::new();
    for (key, value) in &pairs {
        let Some(rest) = key.strip_prefix("filter[") else {
            continue;
        };
        let bad_filter = |reason: &str| {
            ApiError::invalid(
                TITLE,
                ValidationError::single(format!("{route}.{key}"), reason),
            )
        };
        let Some((inner, after)) = rest.split_once(']') else {
            return Err(bad_filter("filters are only supported on labels"));
        };
        if !after.is_empty() {
            return Err(bad_filter("advanced filters are not supported"));
        }
        let Some(label) = inner.strip_prefix("labels.") else {
            return Err(bad_filter("filters are only supported on labels"));
        };
        labels.insert(label.to_owned(), value.clone());
    }
    let name = get("name").filter(|n| !n.is_empty()).map(str::to_owned);
    Ok(ListParams {
        page,
        name,
        labels,
        pairs,
    })
}

impl<S: Send + Sync> FromRequestParts<S> for ListParams {
    type Rejection = ApiError;

    /// The list parameters of the request's query, checked against its route.
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let route = MatchedPath::from_request_parts(parts, state)
            .await
            .map(|route| route.as_str().to_owned())
            .unwrap_or_default();
        parse(parts.uri.query(), &route)
    }
}

/// Answers a list request: `{"total","items","next"}` with each item shown by `show`, and
/// the change-feed revision the page reflects in [`REVISION_HEADER`]. The revision is read
/// before `fetch` runs, so the page holds at least every change up to it, and a watch from
/// it misses nothing (it may repeat a change the page already shows).
pub async fn answer<S, T, W, Fut>(
    state: &AppState<S>,
    request: (&ListParams, &Uri, &HeaderMap),
    fetch: impl FnOnce() -> Fut,
    show: impl FnMut(T) -> W,
) -> ApiResult<Response>
where
    S: SecretStore,
    Fut: Future<Output = store::Result<Page<T>>>,
    W: Serialize,
{
    let (params, uri, headers) = request;
    let revision = state
        .store
        .current_revision()
        .await
        .map_err(|e| ApiError::store(TITLE, e))?;
    let page = fetch().await.map_err(|e| ApiError::store(TITLE, e))?;
    let next = next_link(
        uri,
        headers,
        state.config.scheme(),
        params,
        page.next.as_ref(),
    );
    let body = ListBody {
        total: page.total,
        items: page.items.into_iter().map(show).collect(),
        next,
    };
    Ok(([(REVISION_HEADER, revision.to_string())], Json(body)).into_response())
}

/// The absolute URL of the page after this one, keeping every other parameter, sorted by
/// key as Go's `url.Values.Encode` does.
pub fn next_link(
    uri: &Uri,
    headers: &HeaderMap,
    scheme: &str,
    params: &ListParams,
    next: Option<&Cursor>,
) -> Option<String> {
    let next = next?;
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    let mut pairs: Vec<(String, String)> = params
        .pairs
        .iter()
        .filter(|(k, _)| !matches!(k.as_str(), "offset" | "size" | "cursor"))
        .cloned()
        .collect();
    pairs.push(("cursor".into(), next.encode()));
    pairs.push(("offset".into(), next.offset.to_string()));
    pairs.push(("size".into(), params.page.size().to_string()));
    pairs.sort_by(|a, b| a.0.cmp(&b.0));
    let query = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish();
    Some(format!("{scheme}://{host}{}?{query}", uri.path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn defaults_are_the_first_page_of_100() {
        let p = parse(None, "/secrets").unwrap();
        assert_eq!(p.page.size(), 100);
        assert_eq!(p.page.start(), &PageStart::Offset(0));
    }

    #[test]
    fn bad_sizes_and_offsets_have_kumas_messages() {
        let e = parse(Some("size=abc"), "/secrets").unwrap_err();
        assert_eq!(e.detail, "Invalid page size");
        assert_eq!(e.violations[0].reason, "invalid format");
        let e = parse(Some("size=0"), "/secrets").unwrap_err();
        assert_eq!(e.violations[0].reason, "must be greater than 0");
        let e = parse(Some("size=2000"), "/secrets").unwrap_err();
        assert_eq!(
            e.violations[0].reason,
            "invalid page size of 2000. Maximum page size is 1000"
        );
        let e = parse(Some("offset=invalid"), "/secrets").unwrap_err();
        assert_eq!(
            e.detail,
            r#"invalid: invalid offset: parsing "invalid": invalid syntax"#
        );
        assert!(parse(Some("cursor=@@@"), "/secrets").is_err());
    }

    #[test]
    fn nul_characters_are_refused_in_every_parameter() {
        for query in [
            "name=%00",
            "filter[labels.a]=x%00",
            "filter[labels.a%00]=x",
            "offset=1%00",
        ] {
            let e = parse(Some(query), "/secrets").unwrap_err();
            assert_eq!(e.status, StatusCode::BAD_REQUEST, "{query}");
            assert_eq!(e.violations[0].reason, crate::domain::NUL_REASON, "{query}");
        }
        let cursor = Cursor {
            offset: 1,
            mesh: Some("a\0".into()),
            name: "b".into(),
        };
        assert!(parse(Some(&format!("cursor={}", cursor.encode())), "/secrets").is_err());
    }

    #[test]
    fn a_cursor_offset_beyond_what_sql_takes_is_refused() {
        let raw = format!("{}\n-\nname", u64::MAX);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
        let e = parse(Some(&format!("cursor={token}")), "/secrets").unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[test]
    fn only_label_filters_are_supported() {
        let p = parse(
            Some("filter%5Blabels.kuma.io%2Fzone%5D=east&name=ab"),
            "/secrets",
        )
        .unwrap();
        assert_eq!(
            p.labels.get("kuma.io/zone").map(String::as_str),
            Some("east")
        );
        assert_eq!(p.name.as_deref(), Some("ab"));
        let e = parse(Some("filter[spec.x]=1"), "/meshes/{mesh}/secrets").unwrap_err();
        assert_eq!(e.detail, "Resource is not valid");
        assert_eq!(
            e.violations[0].field,
            "/meshes/{mesh}/secrets.filter[spec.x]"
        );
        assert_eq!(
            e.violations[0].reason,
            "filters are only supported on labels"
        );
        let e = parse(Some("filter[labels.a][eq]=1"), "/secrets").unwrap_err();
        assert_eq!(e.violations[0].field, "/secrets.filter[labels.a][eq]");
        assert_eq!(e.violations[0].reason, "advanced filters are not supported");
    }

    #[test]
    fn next_links_are_absolute_and_sorted() {
        let params = parse(Some("size=2&name=x&offset=0"), "/secrets").unwrap();
        let uri: Uri = "/meshes/default/secrets?size=2&name=x&offset=0"
            .parse()
            .unwrap();
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "127.0.0.1:5681".parse().unwrap());
        let cursor = Cursor {
            offset: 2,
            mesh: Some("default".into()),
            name: "b".into(),
        };
        let link = next_link(&uri, &headers, "http", &params, Some(&cursor)).unwrap();
        assert_eq!(
            link,
            format!(
                "http://127.0.0.1:5681/meshes/default/secrets?cursor={}&name=x&offset=2&size=2",
                cursor.encode()
            )
        );
        assert!(next_link(&uri, &headers, "http", &params, None).is_none());
    }
}
