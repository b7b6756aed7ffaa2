//! What every resource write shares: reading the JSON body, the `If-Match` /
//! `If-None-Match` preconditions, `ETag`s, and the labels Kuma computes on write.

use super::error::ApiError;
use crate::domain::{Labels, MeshName, ValidationError};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use std::collections::BTreeMap;

/// Label naming a Secret's mesh.
pub const MESH_LABEL: &str = "kuma.io/mesh";
/// Label naming where a resource was created: `zone` or `global`.
pub const ORIGIN_LABEL: &str = "kuma.io/origin";
/// Label naming the zone a resource was created in.
pub const ZONE_LABEL: &str = "kuma.io/zone";
/// Label naming the environment (`universal`).
pub const ENV_LABEL: &str = "kuma.io/env";
/// Label holding a resource's display name.
pub const DISPLAY_NAME_LABEL: &str = "kuma.io/display-name";

/// The `ETag` of a resource at `version`: `"<version>"`.
pub fn etag(version: i64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\"")).expect("digits are a valid header")
}

/// Checks the content type and turns a body-size rejection into Kuma's error body.
///
/// # Errors
/// 415 for a body that is not `application/json` (Kuma's go-restful does the same), 413
/// for one over the limit, 400 for one that could not be read.
pub fn json_body(
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Bytes, ApiError> {
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

/// `If-Match` and `If-None-Match` of a request.
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

/// Kuma's labels computed on write (reference §3.5), for a standalone zone control plane
/// named `zone`: `kuma.io/mesh` on mesh-scoped resources, and `kuma.io/origin`,
/// `kuma.io/zone`, `kuma.io/env` on all. User labels are kept; then the rules of
/// `validateLabels` apply.
///
/// # Errors
/// Every violation of the label rules, as `labels["<key>"]` fields.
pub fn computed_labels(
    given: BTreeMap<String, String>,
    mesh: Option<&MeshName>,
    zone: &str,
) -> Result<Labels, ValidationError> {
    let mut labels = given;
    if let Some(mesh) = mesh {
        labels
            .entry(MESH_LABEL.to_owned())
            .or_insert_with(|| mesh.as_str().to_owned());
    }
    labels
        .entry(ORIGIN_LABEL.to_owned())
        .or_insert_with(|| "zone".to_owned());
    let mut errors = ValidationError::default();
    let origin = labels[ORIGIN_LABEL].clone();
    match origin.as_str() {
        "zone" => {
            labels
                .entry(ZONE_LABEL.to_owned())
                .or_insert_with(|| zone.to_owned());
            labels
                .entry(ENV_LABEL.to_owned())
                .or_insert_with(|| "universal".to_owned());
            if labels[ZONE_LABEL] != zone {
                errors.push(
                    format!("labels[{ZONE_LABEL:?}]"),
                    format!("{ZONE_LABEL} label should have {zone} value"),
                );
            }
            if let Some(mesh) = mesh
                && labels[MESH_LABEL] != mesh.as_str()
            {
                errors.push(
                    format!("labels[{MESH_LABEL:?}]"),
                    format!("{MESH_LABEL} label must not differ from mesh set on resource"),
                );
            }
        }
        "global" => {}
        other => errors.push(
            format!("labels[{ORIGIN_LABEL:?}]"),
            format!("unknown resource origin {other:?}"),
        ),
    }
    let labels = errors.collect(Labels::parse(labels));
    match labels {
        Some(labels) if errors.is_empty() => Ok(labels),
        _ => Err(errors),
    }
}

/// Kuma's `validateImmutableLabels`: origin, zone and display name cannot change on update.
///
/// # Errors
/// A violation per changed or removed label.
pub fn check_immutable_labels(current: &Labels, new: &Labels) -> Result<(), ValidationError> {
    let mut errors = ValidationError::default();
    for key in [ORIGIN_LABEL, ZONE_LABEL, DISPLAY_NAME_LABEL] {
        match (current.get(key), new.get(key)) {
            (Some(old), Some(new)) if old != new => errors.push(
                format!("labels[{key:?}]"),
                format!("is immutable, cannot be changed from {old:?} to {new:?}"),
            ),
            (Some(old), None) => errors.push(
                format!("labels[{key:?}]"),
                format!("is immutable, cannot be removed (was {old:?})"),
            ),
            _ => {}
        }
    }
    errors.into_result(|| ())
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

    #[test]
    fn kuma_labels_are_computed_and_checked() {
        let mesh = MeshName::parse("default").unwrap();
        let labels = computed_labels(BTreeMap::new(), Some(&mesh), "default").unwrap();
        assert_eq!(labels.get(MESH_LABEL), Some("default"));
        assert_eq!(labels.get(ORIGIN_LABEL), Some("zone"));
        assert_eq!(labels.get(ZONE_LABEL), Some("default"));
        assert_eq!(labels.get(ENV_LABEL), Some("universal"));

        let bad: BTreeMap<_, _> = [
            (ORIGIN_LABEL.to_owned(), "mars".to_owned()),
            ("bad key!".to_owned(), "v".to_owned()),
        ]
        .into();
        let err = computed_labels(bad, None, "default").unwrap_err();
        assert_eq!(err.violations.len(), 2);
        assert_eq!(
            err.violations[0].reason,
            r#"unknown resource origin "mars""#
        );

        let wrong_mesh: BTreeMap<_, _> = [(MESH_LABEL.to_owned(), "other".to_owned())].into();
        let err = computed_labels(wrong_mesh, Some(&mesh), "default").unwrap_err();
        assert_eq!(
            err.violations[0].reason,
            "kuma.io/mesh label must not differ from mesh set on resource"
        );
    }

    #[test]
    fn origin_and_zone_are_immutable() {
        let old = Labels::from_pairs([(ZONE_LABEL, "a"), (DISPLAY_NAME_LABEL, "x")]).unwrap();
        let new = Labels::from_pairs([(ZONE_LABEL, "b")]).unwrap();
        let err = check_immutable_labels(&old, &new).unwrap_err();
        assert_eq!(
            err.violations[0].reason,
            r#"is immutable, cannot be changed from "a" to "b""#
        );
        assert_eq!(
            err.violations[1].reason,
            r#"is immutable, cannot be removed (was "x")"#
        );
    }
}
