//! A resource as Kuma's REST API shows it, and a page of them. The same types are the
//! Universal YAML `apply` reads and `export` writes (without timestamps: the store sets
//! those).

use crate::domain::{
    ExternalService, ExternalServiceSpec, Labels, Mesh, MeshSpec, Meta, NewExternalService,
    NewMesh, NewSecret, Resource, Secret, SecretData, SecretKey,
};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// RFC 3339 with as many fractional digits as needed, UTC (`Z`).
pub fn timestamp(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// The fields every resource item carries beside its `type` and `name`: times (absent in
/// Universal YAML, set by the store) and labels.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ItemMeta {
    /// When it was created (`creationTime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_time: Option<String>,
    /// When it last changed (`modificationTime`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modification_time: Option<String>,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

impl ItemMeta {
    /// The Universal form: labels, no times.
    fn universal(labels: &Labels) -> Self {
        ItemMeta {
            creation_time: None,
            modification_time: None,
            labels: labels.as_map().clone(),
        }
    }

    /// A stored resource's: labels and times.
    fn stored(labels: &Labels, meta: &Meta) -> Self {
        ItemMeta {
            creation_time: Some(timestamp(&meta.creation_time)),
            modification_time: Some(timestamp(&meta.modification_time)),
            labels: labels.as_map().clone(),
        }
    }
}

/// A Secret or GlobalSecret: `type`, `mesh` (Secrets only), `name`, times, `labels`, and
/// `data` in standard padded base64.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretItem {
    /// `Secret` or `GlobalSecret`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The Mesh of a `Secret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh: Option<String>,
    /// Its name.
    pub name: String,
    /// Times and labels.
    #[serde(flatten)]
    pub meta: ItemMeta,
    /// Its bytes, base64.
    pub data: String,
    /// When the earliest certificate in the value expires (set by the server, a
    /// kuma-secrets extension); absent for a value without a PEM certificate.
    #[serde(rename = "notAfter", default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

impl SecretItem {
    fn new(key: &SecretKey, data: &SecretData, meta: ItemMeta) -> Self {
        SecretItem {
            kind: key.secret_type().as_str().to_owned(),
            mesh: key.mesh().map(|m| m.as_str().to_owned()),
            name: key.name().as_str().to_owned(),
            meta,
            data: STANDARD.encode(data.expose()),
            not_after: not_after_of(data.expose()),
        }
    }
}

/// A value's `notAfter` (items, `_usage`): the earliest certificate expiry in `data`,
/// RFC 3339 to the second.
pub fn not_after_of(data: &[u8]) -> Option<String> {
    crate::certificates::earliest_not_after(data)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
}

/// The JSON of `SecretItem::from(secret)`, byte for byte, written straight from the secret
/// (what a GET answers). The value's base64 goes into the buffer as it is encoded: through
/// `SecretItem` it was a `String` first, then scanned again for characters to escape, of
/// which base64 has none (the two were 3 % of a cached GET under `perf`).
pub fn secret_json(secret: &Secret) -> Vec<u8> {
    let data = secret.data.expose();
    let mut out = Vec::with_capacity(data.len().div_ceil(3) * 4 + 512);
    let field = |out: &mut Vec<u8>, name: &str, value: &str| {
        out.extend_from_slice(name.as_bytes());
        // Writing a `&str` into a `Vec` cannot fail.
        serde_json::to_writer(&mut *out, value).expect("a string serializes");
    };
    field(&mut out, r#"{"type":"#, secret.key.secret_type().as_str());
    if let Some(mesh) = secret.key.mesh() {
        field(&mut out, r#","mesh":"#, mesh.as_str());
    }
    field(&mut out, r#","name":"#, secret.key.name().as_str());
    field(
        &mut out,
        r#","creationTime":"#,
        &timestamp(&secret.meta.creation_time),
    );
    field(
        &mut out,
        r#","modificationTime":"#,
        &timestamp(&secret.meta.modification_time),
    );
    let labels = secret.labels.as_map();
    if !labels.is_empty() {
        out.extend_from_slice(br#","labels":"#);
        serde_json::to_writer(&mut out, labels).expect("a map of strings serializes");
    }
    out.extend_from_slice(br#","data":""#);
    let start = out.len();
    out.resize(
        start + base64::encoded_len(data.len(), true).unwrap_or(0),
        0,
    );
    let written = STANDARD
        .encode_slice(data, &mut out[start..])
        .expect("the buffer has the encoded length");
    out.truncate(start + written);
    out.push(b'"');
    if let Some(not_after) = not_after_of(data) {
        field(&mut out, r#","notAfter":"#, &not_after);
    }
    out.push(b'}');
    out
}

impl From<&Secret> for SecretItem {
    fn from(secret: &Secret) -> Self {
        // From the parts: a `NewSecret` to hand over would copy the value (and zeroize
        // the copy) on every GET.
        SecretItem::new(
            &secret.key,
            &secret.data,
            ItemMeta::stored(&secret.labels, &secret.meta),
        )
    }
}

impl From<&NewSecret> for SecretItem {
    /// The Universal form, without timestamps.
    fn from(secret: &NewSecret) -> Self {
        SecretItem::new(
            &secret.key,
            &secret.data,
            ItemMeta::universal(&secret.labels),
        )
    }
}

/// A Mesh: `type`, `name`, times, `labels`, then its spec fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeshItem {
    /// Always `Mesh`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Times and labels.
    #[serde(flatten)]
    pub meta: ItemMeta,
    /// Kuma's resource identifier, `kri_m____{name}_` (stored Meshes only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kri: Option<String>,
    /// Its spec fields (`mtls`, `logging`, …), flat beside the meta fields.
    #[serde(flatten)]
    pub spec: MeshSpec,
}

impl From<&Mesh> for MeshItem {
    fn from(mesh: &Mesh) -> Self {
        MeshItem {
            kind: "Mesh".to_owned(),
            name: mesh.name.as_str().to_owned(),
            meta: ItemMeta::stored(&mesh.labels, &mesh.meta),
            kri: Some(mesh_kri(mesh.name.as_str())),
            spec: mesh.spec.clone(),
        }
    }
}

impl From<&NewMesh> for MeshItem {
    /// The Universal form, without timestamps.
    fn from(mesh: &NewMesh) -> Self {
        MeshItem {
            kind: "Mesh".to_owned(),
            name: mesh.name.as_str().to_owned(),
            meta: ItemMeta::universal(&mesh.labels),
            kri: None,
            spec: mesh.spec.clone(),
        }
    }
}

/// An ExternalService: `type`, `mesh`, `name`, times, `labels`, then its spec fields
/// (`networking`, `tags`), flat beside them as Kuma's REST API has them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExternalServiceItem {
    /// Always `ExternalService`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Its Mesh.
    pub mesh: String,
    /// Its name.
    pub name: String,
    /// Times and labels.
    #[serde(flatten)]
    pub meta: ItemMeta,
    /// Its spec fields.
    #[serde(flatten)]
    pub spec: ExternalServiceSpec,
}

impl From<&ExternalService> for ExternalServiceItem {
    fn from(service: &ExternalService) -> Self {
        ExternalServiceItem {
            kind: crate::domain::EXTERNAL_SERVICE.to_owned(),
            mesh: service.mesh.as_str().to_owned(),
            name: service.name.as_str().to_owned(),
            meta: ItemMeta::stored(&service.labels, &service.meta),
            spec: service.spec.clone(),
        }
    }
}

impl From<&NewExternalService> for ExternalServiceItem {
    /// The Universal form, without timestamps.
    fn from(service: &NewExternalService) -> Self {
        ExternalServiceItem {
            kind: crate::domain::EXTERNAL_SERVICE.to_owned(),
            mesh: service.mesh.as_str().to_owned(),
            name: service.name.as_str().to_owned(),
            meta: ItemMeta::universal(&service.labels),
            spec: service.spec.clone(),
        }
    }
}

/// Kuma's KRI of a Mesh: `kri_<type>_<mesh>_<zone>_<namespace>_<name>_<section>` with type
/// `m` and only the name set.
pub fn mesh_kri(name: &str) -> String {
    format!("kri_m____{name}_")
}

/// A resource in its Universal form.
pub fn universal(resource: &Resource) -> serde_json::Value {
    let value = match resource {
        Resource::Secret(secret) => serde_json::to_value(SecretItem::from(secret)),
        Resource::Mesh(mesh) => serde_json::to_value(MeshItem::from(mesh)),
        Resource::ExternalService(service) => {
            serde_json::to_value(ExternalServiceItem::from(service))
        }
    };
    value.expect("wire items serialize")
}

/// A page of a list: `{"total","items","next"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListBody<T> {
    /// Every match, not just this page.
    pub total: u64,
    /// This page.
    pub items: Vec<T>,
    /// Absolute URL of the next page, or null.
    pub next: Option<String>,
}

/// One use of a secret (`GET …/secrets/{name}/_usage`): by an mTLS backend of its Mesh
/// (`referrerType: Mesh`, with `backend`, `backendType`, `enabled`), or by a field of
/// another resource of the Mesh (`referrerType: ExternalService`, with `name`, `field`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretUsage {
    /// `Mesh` or `ExternalService`.
    pub referrer_type: String,
    /// The Mesh.
    pub mesh: String,
    /// The backend using the secret (a Mesh's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// `builtin` or `provided` (a Mesh's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_type: Option<String>,
    /// Whether that backend is the enabled one (a Mesh's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// The referrer's name (another resource's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The field naming the secret (another resource's), e.g. `networking.tls.clientKey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// The uses of a secret: `{"total","items"}` (a complete list, never paged).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretUsageList {
    /// How many.
    pub total: u64,
    /// Each use.
    pub items: Vec<SecretUsage>,
    /// When the earliest PEM certificate in the secret expires; absent when it holds none
    /// (or no longer exists).
    #[serde(rename = "notAfter", default, skip_serializing_if = "Option::is_none")]
    pub not_after: Option<String>,
}

/// One version of a secret in `GET …/{name}/_versions` (metadata, never data).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionItem {
    /// The version (the `ETag` a `GET …?version=V` answers with).
    pub version: i64,
    /// When it was written.
    #[serde(rename = "modificationTime")]
    pub modification_time: String,
    /// It is the secret's current version.
    pub current: bool,
    /// Who wrote it, when the store knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<crate::store::feed::Actor>,
    /// When the secret was deleted, on the versions of a deleted secret.
    #[serde(
        rename = "deletionTime",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub deletion_time: Option<String>,
}

impl From<&crate::store::history::VersionInfo> for VersionItem {
    fn from(info: &crate::store::history::VersionInfo) -> Self {
        VersionItem {
            version: info.version,
            modification_time: timestamp(&info.modification_time),
            current: info.current,
            actor: info.actor.clone(),
            deletion_time: info.deletion_time.as_ref().map(timestamp),
        }
    }
}

/// The body of `POST …/{name}/_rollback` (`version` required) and `…/_restore` (optional:
/// the newest kept version by default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRequest {
    /// The version to return to.
    #[serde(default)]
    pub version: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{MeshName, ResourceName};
    use chrono::{TimeZone, Timelike};

    fn secret(key: SecretKey, data: Vec<u8>, labels: &[(&str, &str)], nanos: u32) -> Secret {
        let created = Utc
            .with_ymd_and_hms(2026, 12, 7, 10, 0, 0)
            .unwrap()
            .with_nanosecond(nanos)
            .unwrap();
        Secret {
            key,
            data: SecretData::from_stored(data),
            // Stored labels skip validation: what a row behind the service's back may hold.
            labels: Labels::from_stored(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            meta: Meta {
                version: 3,
                creation_time: created,
                modification_time: created + chrono::Duration::milliseconds(1500),
            },
        }
    }

    /// `secret_json` is what serde makes of `SecretItem`, for every shape a secret takes:
    /// with and without a Mesh and labels, values of every length modulo 3 and every byte,
    /// labels that need escaping, times with and without fractions.
    #[test]
    fn secret_json_is_the_items_serialization() {
        let mesh = MeshName::parse("default").unwrap();
        let name = ResourceName::parse("tls-key.v1").unwrap();
        let keys = [
            SecretKey::secret(mesh, name.clone()),
            SecretKey::global(name),
        ];
        let values: Vec<Vec<u8>> = vec![
            vec![],
            b"x".to_vec(),
            b"xy".to_vec(),
            b"xyz".to_vec(),
            (0..=255).collect(),
            vec![b'x'; 1024],
        ];
        let labels: [&[(&str, &str)]; 3] = [
            &[],
            &[("kuma.io/mesh", "default"), ("team", "payments")],
            &[("quote\"back\\slash", "tab\tnew\nline\u{1}é😀</script>")],
        ];
        for key in &keys {
            for value in &values {
                for labels in labels {
                    for nanos in [0, 123_456_000, 1] {
                        let secret = secret(key.clone(), value.clone(), labels, nanos);
                        let want = serde_json::to_vec(&SecretItem::from(&secret)).unwrap();
                        assert_eq!(
                            String::from_utf8(secret_json(&secret)).unwrap(),
                            String::from_utf8(want).unwrap()
                        );
                    }
                }
            }
        }
    }
}
