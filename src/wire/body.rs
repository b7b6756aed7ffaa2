//! A resource body as read from a PUT or a file, before validation, read like Kuma's
//! jsonpb decoder: unknown fields are ignored, `data` is standard padded base64 (CR/LF
//! ignored), timestamps and `kri` in the body are ignored (the server sets them). Then its one
//! validation into a [`NewSecret`] or a [`NewMesh`], used by the API and by `apply` and
//! `import` alike.

use crate::domain::{
    Labels, MeshName, NewExternalService, NewMesh, NewSecret, ResourceName, SecretData, SecretKey,
    SecretType, ValidationError,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

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
            Some(other) => return Err(invalid(must_be(field, "a string", &other))),
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
                        return Err(invalid(must_be(&format!("label {k}"), "a string", &other)));
                    }
                }
            }
        }
        Some(other) => {
            return Err(invalid(must_be("labels", "an object of strings", &other)));
        }
    }
    match fields.remove("data") {
        None | Some(Value::Null) => {}
        Some(Value::String(encoded)) => {
            parsed.data = Some(decode_base64(&encoded).map_err(invalid)?);
        }
        Some(other) => return Err(invalid(must_be("data", "a base64 string", &other))),
    }
    // Server-set fields are ignored, as Kuma does.
    fields.remove("creationTime");
    fields.remove("modificationTime");
    fields.remove("kri");
    fields.remove("notAfter");
    parsed.rest = fields;
    Ok(parsed)
}

/// `{what} must be {expected}, not {the JSON kind of got}`.
fn must_be(what: &str, expected: &str, got: &Value) -> String {
    format!("{what} must be {expected}, not {}", json_kind(got))
}

/// Standard, padded base64, ignoring CR and LF (Go's `encoding/json` for `[]byte`).
pub fn decode_base64(encoded: &str) -> Result<Vec<u8>, String> {
    // A copy without the line breaks only when there are some (PEM-style wrapping): most
    // values have none, and copying a value a character at a time was 2 % of a PUT.
    let is_break = |b: &u8| *b == b'\r' || *b == b'\n';
    let compact: std::borrow::Cow<'_, [u8]> = if encoded.as_bytes().iter().any(is_break) {
        encoded
            .bytes()
            .filter(|b| !is_break(b))
            .collect::<Vec<u8>>()
            .into()
    } else {
        encoded.as_bytes().into()
    };
    STANDARD.decode(&compact).map_err(|e| match e {
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

impl ResourceBody {
    /// The one validation of a Secret or GlobalSecret body (the API's PUT, `apply`,
    /// `import`), every violation at once, in Kuma's order: the name, the mesh (a Secret's
    /// must be a valid mesh name, a GlobalSecret has none), the labels by `labels`
    /// (the API computes Kuma's labels, a file keeps them as written), then the data.
    ///
    /// # Errors
    /// Every violation.
    pub fn into_new_secret(
        self,
        kind: SecretType,
        labels: impl FnOnce(
            BTreeMap<String, String>,
            Option<&MeshName>,
        ) -> Result<Labels, ValidationError>,
    ) -> Result<NewSecret, ValidationError> {
        let mut errors = ValidationError::default();
        let name = errors.collect(ResourceName::parse(&self.name));
        let mesh = match kind {
            SecretType::Secret => errors.collect(MeshName::parse_field(&self.mesh, "mesh")),
            SecretType::GlobalSecret => {
                if !self.mesh.is_empty() {
                    errors.push("mesh", "mesh cannot be set on global secret");
                }
                None
            }
        };
        let labels = errors.collect(labels(self.labels, mesh.as_ref()));
        let data = match self.data {
            Some(bytes) => errors.collect(SecretData::new(bytes)),
            None => {
                errors.push("data", "cannot be empty");
                None
            }
        };
        match (name, labels, data) {
            (Some(name), Some(labels), Some(data)) if errors.is_empty() => {
                let key = match mesh {
                    Some(mesh) => SecretKey::secret(mesh, name),
                    None => SecretKey::global(name),
                };
                Ok(NewSecret { key, data, labels })
            }
            _ => Err(errors),
        }
    }

    /// The one validation of a Mesh body: its name (by `name`: the API refuses names Kuma
    /// would not create, a file takes any stored name), labels by `labels`, and every
    /// other field as its spec (checked by the store).
    ///
    /// # Errors
    /// Every violation.
    pub fn into_new_mesh(
        self,
        name: impl FnOnce(&str) -> Result<MeshName, ValidationError>,
        labels: impl FnOnce(BTreeMap<String, String>) -> Result<Labels, ValidationError>,
    ) -> Result<NewMesh, ValidationError> {
        let mut errors = ValidationError::default();
        let name = errors.collect(name(&self.name));
        let labels = errors.collect(labels(self.labels));
        let mut spec = self.rest;
        errors.collect(crate::domain::mtls::normalize_spec(&mut spec));
        match (name, labels) {
            (Some(name), Some(labels)) if errors.is_empty() => Ok(NewMesh { name, spec, labels }),
            _ => Err(errors),
        }
    }
}

impl ResourceBody {
    /// The one validation of an ExternalService body: its name, its mesh, labels by
    /// `labels`, and its spec (`networking`, `tags`; other fields dropped, as Kuma's decoder
    /// drops them), checked by the store.
    ///
    /// # Errors
    /// Every violation.
    pub fn into_new_external_service(
        self,
        labels: impl FnOnce(
            BTreeMap<String, String>,
            Option<&MeshName>,
        ) -> Result<Labels, ValidationError>,
    ) -> Result<NewExternalService, ValidationError> {
        let mut errors = ValidationError::default();
        let name = errors.collect(ResourceName::parse(&self.name));
        let mesh = errors.collect(MeshName::parse_field(&self.mesh, "mesh"));
        let labels = errors.collect(labels(self.labels, mesh.as_ref()));
        let mut spec = self.rest;
        crate::domain::external_service::prune_unknown_fields(&mut spec);
        match (name, mesh, labels) {
            (Some(name), Some(mesh), Some(labels)) if errors.is_empty() => Ok(NewExternalService {
                mesh,
                name,
                spec,
                labels,
            }),
            _ => Err(errors),
        }
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
        // Offsets count what is left once line breaks are taken out, as Go's do.
        assert_eq!(
            decode_base64("dGVz\r\ndA_=").unwrap_err(),
            "illegal base64 data at input byte 6"
        );
        assert_eq!(decode_base64("\ndGVz\ndAo=\r\n").unwrap(), b"test\n");
        assert!(decode_base64("dGVzé\ndAo=").is_err());
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
