//! Kuma's JSON shapes: item and list bodies out, resource bodies in.
//!
//! Secret and Mesh are Kuma "legacy" types: meta and spec fields sit flat in one object, in
//! the order `type, mesh, name, creationTime, modificationTime, labels, <spec>`. Input is
//! read like Kuma's jsonpb decoder: unknown fields are ignored, `data` is standard padded
//! base64 (CR/LF ignored), timestamps in the body are ignored (the server sets them).

use crate::domain::{Labels, Mesh, MeshSpec, NewSecret, Resource, Secret};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// RFC 3339 with as many fractional digits as needed, UTC (`Z`).
pub fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// A Secret or GlobalSecret as Kuma's REST API shows it.
#[derive(Serialize)]
pub struct SecretItem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    mesh: Option<&'a str>,
    name: &'a str,
    #[serde(rename = "creationTime")]
    creation_time: String,
    #[serde(rename = "modificationTime")]
    modification_time: String,
    #[serde(skip_serializing_if = "Labels::is_empty")]
    labels: &'a Labels,
    data: String,
}

impl<'a> From<&'a Secret> for SecretItem<'a> {
    fn from(secret: &'a Secret) -> Self {
        SecretItem {
            kind: secret.key.secret_type().as_str(),
            mesh: secret.key.mesh().map(|m| m.as_str()),
            name: secret.key.name().as_str(),
            creation_time: timestamp(&secret.meta.creation_time),
            modification_time: timestamp(&secret.meta.modification_time),
            labels: &secret.labels,
            data: STANDARD.encode(secret.data.expose()),
        }
    }
}

/// A Mesh as Kuma's REST API shows it: meta, then the spec fields.
#[derive(Serialize)]
pub struct MeshItem<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    name: &'a str,
    #[serde(rename = "creationTime")]
    creation_time: String,
    #[serde(rename = "modificationTime")]
    modification_time: String,
    #[serde(skip_serializing_if = "Labels::is_empty")]
    labels: &'a Labels,
    #[serde(flatten)]
    spec: &'a MeshSpec,
}

impl<'a> From<&'a Mesh> for MeshItem<'a> {
    fn from(mesh: &'a Mesh) -> Self {
        MeshItem {
            kind: "Mesh",
            name: mesh.name.as_str(),
            creation_time: timestamp(&mesh.meta.creation_time),
            modification_time: timestamp(&mesh.meta.modification_time),
            labels: &mesh.labels,
            spec: &mesh.spec,
        }
    }
}

/// `{"total","items","next"}`.
#[derive(Serialize)]
pub struct ListBody<T> {
    /// Every match, not just this page.
    pub total: u64,
    /// This page.
    pub items: Vec<T>,
    /// Absolute URL of the next page, or null.
    pub next: Option<String>,
}

/// The Kubernetes manifest Kuma returns for `?format=k8s` (reference §8): the only label it
/// carries is `kuma.io/mesh`.
pub fn kubernetes_manifest(secret: &Secret, namespace: &str) -> Value {
    let resource = Resource::Secret(NewSecret {
        key: secret.key.clone(),
        data: secret.data.clone(),
        labels: Labels::default(),
    });
    crate::manifest::to_kubernetes(&resource, Some(&secret.meta.creation_time), namespace)
}

/// A resource body as read from a PUT, before validation.
#[derive(Debug, Default)]
pub struct ResourceBody {
    /// `type`, "" if absent.
    pub kind: String,
    /// `name`, "" if absent.
    pub name: String,
    /// `mesh`, "" if absent.
    pub mesh: String,
    /// `labels`.
    pub labels: BTreeMap<String, String>,
    /// Decoded `data`, `None` if absent or null.
    pub data: Option<Vec<u8>>,
    /// Every other field (a Mesh's spec).
    pub rest: Map<String, Value>,
}

/// Reads a PUT body for a resource of `type_name` (used in messages). Errors are the detail
/// of a 400 "Bad Request", in Kuma's `invalid Secret object: "…"` form.
pub fn parse_body(type_name: &str, body: &[u8]) -> Result<ResourceBody, String> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        format!(
            "invalid {type_name} object: {:?}",
            format!("malformed JSON: {e}")
        )
    })?;
    parse_value(type_name, value)
}

/// As [`parse_body`], for a document already parsed (from YAML or JSON).
pub fn parse_value(type_name: &str, value: Value) -> Result<ResourceBody, String> {
    let invalid = |why: String| format!("invalid {type_name} object: {why:?}");
    // Postgres cannot store NUL in text or JSON; SQLite can, and `copy` would then fail
    // midway: refuse it on the way in, everywhere.
    crate::domain::reject_nul_in_json("", &value).map_err(|e| invalid(e.to_string()))?;
    let Value::Object(mut fields) = value else {
        return Err(invalid("the body must be a JSON object".into()));
    };
    let mut parsed = ResourceBody::default();
    for (field, target) in [
        ("type", &mut parsed.kind),
        ("name", &mut parsed.name),
        ("mesh", &mut parsed.mesh),
    ] {
        match fields.remove(field) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => *target = s,
            Some(other) => {
                return Err(invalid(format!(
                    "{field} must be a string, not {}",
                    json_kind(&other)
                )));
            }
        }
    }
    match fields.remove("labels") {
        None | Some(Value::Null) => {}
        Some(Value::Object(labels)) => {
            for (k, v) in labels {
                match v {
                    Value::String(v) => {
                        parsed.labels.insert(k, v);
                    }
                    other => {
                        return Err(invalid(format!(
                            "label {k} must be a string, not {}",
                            json_kind(&other)
                        )));
                    }
                }
            }
        }
        Some(other) => {
            return Err(invalid(format!(
                "labels must be an object of strings, not {}",
                json_kind(&other)
            )));
        }
    }
    match fields.remove("data") {
        None | Some(Value::Null) => {}
        Some(Value::String(encoded)) => {
            parsed.data = Some(decode_base64(&encoded).map_err(invalid)?);
        }
        Some(other) => {
            return Err(invalid(format!(
                "data must be a base64 string, not {}",
                json_kind(&other)
            )));
        }
    }
    // Server-set fields are ignored, as Kuma does.
    fields.remove("creationTime");
    fields.remove("modificationTime");
    parsed.rest = fields;
    Ok(parsed)
}

/// Standard, padded base64, ignoring CR and LF (Go's `encoding/json` for `[]byte`).
pub fn decode_base64(encoded: &str) -> Result<Vec<u8>, String> {
    let compact: String = encoded
        .chars()
        .filter(|c| *c != '\r' && *c != '\n')
        .collect();
    STANDARD.decode(compact.as_bytes()).map_err(|e| match e {
        base64::DecodeError::InvalidByte(at, _) | base64::DecodeError::InvalidLastSymbol(at, _) => {
            format!("illegal base64 data at input byte {at}")
        }
        base64::DecodeError::InvalidLength(at) => {
            format!("illegal base64 data at input byte {at}")
        }
        base64::DecodeError::InvalidPadding => {
            format!(
                "illegal base64 data at input byte {}",
                compact.len().saturating_sub(1)
            )
        }
    })
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_must_be_standard_and_padded() {
        assert_eq!(decode_base64("dGVzdAo=").unwrap(), b"test\n");
        assert_eq!(decode_base64("dGVz\r\ndAo=").unwrap(), b"test\n");
        assert!(
            decode_base64("dGVzdAo")
                .unwrap_err()
                .starts_with("illegal base64 data")
        );
        assert_eq!(
            decode_base64("dGV_dAo=").unwrap_err(),
            "illegal base64 data at input byte 3"
        );
    }

    #[test]
    fn bodies_ignore_unknown_and_server_fields_and_name_bad_types() {
        let body = br#"{"type":"Secret","name":"s","mesh":"m","data":"eA==","unknown":1,"creationTime":"x"}"#;
        let parsed = parse_body("Secret", body).unwrap();
        assert_eq!(parsed.name, "s");
        assert_eq!(parsed.data.as_deref(), Some(&b"x"[..]));
        assert_eq!(parsed.rest.keys().collect::<Vec<_>>(), ["unknown"]);

        let err = parse_body("Secret", br#"{"name":5}"#).unwrap_err();
        assert_eq!(
            err,
            r#"invalid Secret object: "name must be a string, not a number""#
        );
        assert!(
            parse_body("Secret", b"{")
                .unwrap_err()
                .contains("malformed JSON")
        );
        assert!(
            parse_body("Secret", b"[]")
                .unwrap_err()
                .contains("JSON object")
        );
    }
}
