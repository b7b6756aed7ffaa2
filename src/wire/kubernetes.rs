//! Kubernetes manifests, as Kuma's Kubernetes mode stores its resources (reference §8): a
//! `v1` `Secret` of type `system.kuma.io/secret` (the mesh in its `kuma.io/mesh` label) or
//! `system.kuma.io/global-secret` with the bytes in `data.value`, and a `kuma.io/v1alpha1`
//! `Mesh` with its spec, and a cluster-scoped `kuma.io/v1alpha1` `ExternalService`.

use crate::domain::{MESH_LABEL, MeshSpec, Resource};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The namespace Kuma's control plane keeps its secrets in on Kubernetes.
pub const KUMA_NAMESPACE: &str = "kuma-system";
/// Kubernetes `type` of a Kuma Secret.
pub const SECRET_K8S_TYPE: &str = "system.kuma.io/secret";
/// Kubernetes `type` of a Kuma GlobalSecret.
pub const GLOBAL_SECRET_K8S_TYPE: &str = "system.kuma.io/global-secret";

/// `metadata` of a Kubernetes object, the fields Kuma's resources use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name (the Kuma name).
    pub name: String,
    /// Its namespace (Secrets only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// When it was created (`creationTimestamp`), RFC 3339 to the second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<String>,
    /// Its labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// A `v1` `Secret` holding a Kuma Secret or GlobalSecret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesSecret {
    /// `v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `Secret`.
    pub kind: String,
    /// [`SECRET_K8S_TYPE`] or [`GLOBAL_SECRET_K8S_TYPE`].
    #[serde(rename = "type")]
    pub secret_type: String,
    /// Name, namespace, labels.
    pub metadata: ObjectMeta,
    /// `value`: the bytes, base64.
    pub data: BTreeMap<String, String>,
}

/// A `kuma.io/v1alpha1` `Mesh`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubernetesMesh {
    /// `kuma.io/v1alpha1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `Mesh`.
    pub kind: String,
    /// Name and labels.
    pub metadata: ObjectMeta,
    /// The Mesh's spec.
    pub spec: MeshSpec,
}

/// A `kuma.io/v1alpha1` `ExternalService`: cluster-scoped, its Mesh at the top level beside
/// `metadata`, its spec under `spec` (Kuma's CRD).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KubernetesExternalService {
    /// `kuma.io/v1alpha1`.
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    /// `ExternalService`.
    pub kind: String,
    /// Its Mesh.
    pub mesh: String,
    /// Name and labels.
    pub metadata: ObjectMeta,
    /// Its spec (`networking`, `tags`).
    pub spec: MeshSpec,
}

/// The Kubernetes form of a resource, in `namespace` (usually [`KUMA_NAMESPACE`]): all
/// labels kept, `kuma.io/mesh` set for a mesh-scoped Secret.
pub fn to_kubernetes(
    resource: &Resource,
    created: Option<&DateTime<Utc>>,
    namespace: &str,
) -> serde_json::Value {
    let created = created.map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true));
    let value = match resource {
        Resource::Secret(secret) => {
            let mut labels = secret.labels.as_map().clone();
            let secret_type = match secret.key.mesh() {
                Some(mesh) => {
                    labels.insert(MESH_LABEL.into(), mesh.as_str().into());
                    SECRET_K8S_TYPE
                }
                None => GLOBAL_SECRET_K8S_TYPE,
            };
            serde_json::to_value(KubernetesSecret {
                api_version: "v1".into(),
                kind: "Secret".into(),
                secret_type: secret_type.into(),
                metadata: ObjectMeta {
                    name: secret.key.name().as_str().into(),
                    namespace: Some(namespace.into()),
                    creation_timestamp: created,
                    labels,
                },
                data: BTreeMap::from([("value".into(), STANDARD.encode(secret.data.expose()))]),
            })
        }
        Resource::Mesh(mesh) => serde_json::to_value(KubernetesMesh {
            api_version: "kuma.io/v1alpha1".into(),
            kind: "Mesh".into(),
            metadata: ObjectMeta {
                name: mesh.name.as_str().into(),
                namespace: None,
                creation_timestamp: created,
                labels: mesh.labels.as_map().clone(),
            },
            spec: mesh.spec.clone(),
        }),
        Resource::ExternalService(service) => serde_json::to_value(KubernetesExternalService {
            api_version: "kuma.io/v1alpha1".into(),
            kind: crate::domain::EXTERNAL_SERVICE.into(),
            mesh: service.mesh.as_str().into(),
            metadata: ObjectMeta {
                name: service.name.as_str().into(),
                namespace: None,
                creation_timestamp: created,
                labels: service.labels.as_map().clone(),
            },
            spec: service.spec.clone(),
        }),
    };
    value.expect("wire manifests serialize")
}
