//! Kuma's JSON and YAML shapes, typed, in one place: what the HTTP API answers and reads,
//! what the API client parses, and what `apply`, `import` and `export` read and write.
//!
//! | file | what |
//! | --- | --- |
//! | `items.rs` | a Secret, GlobalSecret, Mesh or ExternalService as Kuma shows it (API bodies, Universal YAML); list bodies; a secret's versions |
//! | `body.rs` | a resource body as read from a PUT or a file, and its one validation into a `NewSecret` or `NewMesh` |
//! | `kubernetes.rs` | Kubernetes manifests: `v1` `Secret`, `kuma.io/v1alpha1` `Mesh` and `ExternalService` |
//! | `error.rs` | Kuma's error body |
//!
//! Secret and Mesh are Kuma "legacy" types: meta and spec fields sit flat in one object, in
//! the order `type, mesh, name, creationTime, modificationTime, labels, <spec>`.

mod body;
mod error;
mod items;
mod kubernetes;

pub use body::{ResourceBody, decode_base64, parse_body, parse_value};
pub use error::{Cause, ErrorBody, InvalidParameter};
pub use items::{
    ExternalServiceItem, ItemMeta, ListBody, MeshItem, SecretItem, SecretUsage, SecretUsageList,
    VersionItem, VersionRequest, not_after_of, secret_json, timestamp, universal,
};
pub use kubernetes::{
    GLOBAL_SECRET_K8S_TYPE, KUMA_NAMESPACE, KubernetesExternalService, KubernetesMesh,
    KubernetesSecret, ObjectMeta, SECRET_K8S_TYPE, to_kubernetes,
};
