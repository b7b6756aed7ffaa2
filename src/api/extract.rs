//! Typed handler inputs: who calls and against what ([`Caller`]), and what every resource
//! write shares: the JSON body ([`JsonBody`]) and the `If-Match` / `If-None-Match`
//! preconditions ([`Preconditions`]), plus the `ETag` they compare against.

use super::AppState;
use super::auth::User;
use super::error::ApiError;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The server's state and the caller that authentication let in: what every resource
/// handler starts from.
pub struct Caller<S> {
    /// The store and the server's settings.
    pub state: AppState<S>,
    /// Who is calling.
    pub user: User,
}

impl<S: Clone + Send + Sync + 'static> FromRequestParts<AppState<S>> for Caller<S> {
    type Rejection = axum::extract::rejection::ExtensionRejection;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState<S>,
    ) -> Result<Self, Self::Rejection> {
        let axum::Extension(user) =
            axum::Extension::<User>::from_request_parts(parts, state).await?;
        Ok(Caller {
            state: state.clone(),
            user,
        })
    }
}

/// The `ETag` of a resource at `version`: `"<version>"`.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// A request body that must be JSON. Extracting never fails: the handler asks for the
/// bytes with [`JsonBody::bytes`] at the point Kuma checks the body (after the Mesh of the
/// route is found), so the order of status codes stays Kuma's.
pub struct JsonBody(Result<Bytes, ApiError>);

impl JsonBody {
    /// The body.
    ///
    /// # Errors
    /// 415 for a body that is not `application/json` (Kuma's go-restful does the same),
    /// 413 for one over the limit, 400 for one that could not be read.
    pub fn bytes(self) -> Result<Bytes, ApiError> {
        self.0
    }
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = request.headers().clone();
        let body = Bytes::from_request(request, state).await;
        Ok(JsonBody(json_body(&headers, body)))
    }
}

/// A request body that may be left out (`POST …/_restore`); one that is sent must be JSON,
/// as for [`JsonBody`].
pub struct OptionalJsonBody(Result<Option<Bytes>, ApiError>);

impl OptionalJsonBody {
    /// The body, `None` when the request had none.
    ///
    /// # Errors
    /// As [`JsonBody::bytes`].
    pub fn bytes(self) -> Result<Option<Bytes>, ApiError> {
        self.0
    }
}

impl<S: Send + Sync> FromRequest<S> for OptionalJsonBody {
    type Rejection = std::convert::Infallible;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let headers = request.headers().clone();
        let body = match Bytes::from_request(request, state).await {
            Ok(bytes) if bytes.is_empty() => Ok(None),
            other => json_body(&headers, other).map(Some),
        };
        Ok(OptionalJsonBody(body))
    }
}

impl Preconditions {
    /// The version an `If-Match` asks a write to find, for a store call that checks it in
    /// the write itself: `None` without one (or with `*`). Several ETags are checked here
    /// against the version `current` reads, which is then the one expected.
    ///
    /// # Errors
    /// 412 when none of several ETags is the current version; `current`'s own errors.
    pub async fn expected_version<F>(&self, current: F) -> Result<Option<i64>, ApiError>
    where
        F: Future<Output = Result<Option<i64>, ApiError>>,
    {
        match &self.if_match {
            None | Some(Condition::Any) => Ok(None),
            Some(Condition::Versions(versions)) => match versions[..] {
                [version] => Ok(Some(version)),
                _ => {
                    let current = current.await?;
                    self.check(current)?;
                    Ok(current)
                }
            },
        }
    }
}

fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let mime = content_type.split(';').next().unwrap_or("").trim();
    if !mime.eq_ignore_ascii_case("application/json") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Unsupported Media Type",
            format!(
                "the body must be JSON sent with Content-Type: application/json, got {content_type:?}"
            ),
        ));
    }
    body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "Request Entity Too Large",
                format!(
                    "{}: raise --max-secret-size to accept larger secrets",
                    rejection.body_text()
                ),
            )
        } else {
            ApiError::bad_request(rejection.body_text())
        }
    })
}

/// A conditional-request header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `*`: any current version.
    Any,
    /// One or more `"<version>"` ETags.
    Versions(Vec<i64>),
}

impl Condition {
    /// True if a resource at `version` (`None`: absent) matches.
    pub fn matches(&self, version: Option<i64>) -> bool {
        match (self, version) {
            (_, None) => false,
            (Condition::Any, Some(_)) => true,
            (Condition::Versions(vs), Some(v)) => vs.contains(&v),
        }
    }
}

/// `If-Match` and `If-None-Match` of a request. As an extractor, a header that is not one
/// this server issued is a 400.
#[derive(Debug, Default, Clone)]
pub struct Preconditions {
    /// `If-Match`: the resource must exist at one of these versions.
    pub if_match: Option<Condition>,
    /// `If-None-Match`: the resource must not exist (`*`) or not be at these versions.
    pub if_none_match: Option<Condition>,
}

impl Preconditions {
    /// Parses the headers.
    ///
    /// # Errors
    /// 400 for an ETag that is not one this server issued (`"<digits>"`) or `*`.
    pub fn from_headers(headers: &HeaderMap) -> Result<Self, ApiError> {
        Ok(Self {
            if_match: parse_condition(headers, header::IF_MATCH)?,
            if_none_match: parse_condition(headers, header::IF_NONE_MATCH)?,
        })
    }

    /// Checks them against the current version (`None`: the resource does not exist).
    ///
    /// # Errors
    /// 412 naming what failed.
    pub fn check(&self, current: Option<i64>) -> Result<(), ApiError> {
        if let Some(cond) = &self.if_match
            && !cond.matches(current)
        {
            return Err(ApiError::precondition_failed(match current {
                Some(v) => format!("If-Match failed: the resource is at version \"{v}\""),
                None => "If-Match failed: the resource does not exist".to_owned(),
            }));
        }
        if let Some(cond) = &self.if_none_match
            && cond.matches(current)
        {
            return Err(ApiError::precondition_failed(format!(
                "If-None-Match failed: the resource exists at version \"{}\"",
                current.unwrap_or_default()
            )));
        }
        Ok(())
    }
}

/// 304 Not Modified (with the ETag) when a GET's `If-None-Match` names `version`: the
/// client holds it already (RFC 9110 §13.1.2).
pub fn not_modified(preconditions: &Preconditions, version: i64) -> Option<Response> {
    preconditions
        .if_none_match
        .as_ref()
        .filter(|held| held.matches(Some(version)))
        .map(|_| (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(version))]).into_response())
}

impl<S: Send + Sync> FromRequestParts<S> for Preconditions {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Preconditions::from_headers(&parts.headers)
    }
}

fn parse_condition(
    headers: &HeaderMap,
    name: header::HeaderName,
) -> Result<Option<Condition>, ApiError> {
    let Some(value) = headers.get(&name) else {
        return Ok(None);
    };
    let bad = || {
        ApiError::bad_request(format!(
            "invalid {name} header: use * or ETags as returned by this server, e.g. \"3\""
        ))
    };
    let text = value.to_str().map_err(|_| bad())?.trim();
    if text == "*" {
        return Ok(Some(Condition::Any));
    }
    let mut versions = Vec::new();
    for tag in text.split(',') {
        let tag = tag.trim();
        // Weak ETags never match: this server issues strong ones only.
        if tag.starts_with("W/") {
            continue;
        }
        let inner = tag
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .ok_or_else(bad)?;
        versions.push(inner.parse().map_err(|_| bad())?);
    }
    Ok(Some(Condition::Versions(versions)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions_parse_and_match() {
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_MATCH, "\"3\", \"4\"".parse().unwrap());
        headers.insert(header::IF_NONE_MATCH, "*".parse().unwrap());
        let p = Preconditions::from_headers(&headers).unwrap();
        assert_eq!(p.if_match, Some(Condition::Versions(vec![3, 4])));
        assert!(p.if_match.as_ref().unwrap().matches(Some(4)));
        assert!(!p.if_match.as_ref().unwrap().matches(None));
        assert!(p.if_none_match.as_ref().unwrap().matches(Some(1)));

        headers.insert(header::IF_MATCH, "3".parse().unwrap());
        assert!(Preconditions::from_headers(&headers).is_err());
    }
}
