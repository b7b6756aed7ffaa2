//! The domain model: names, labels, secrets, meshes and ExternalServices, validated with Kuma's rules and
//! messages. Nothing here touches a database or the network.

pub mod external_service;
mod labels;
mod mesh;
pub mod mtls;
mod name;
mod secret;
mod validation;

pub use external_service::{
    EXTERNAL_SERVICE, ExternalService, ExternalServiceSpec, NewExternalService,
    external_service_key,
};
pub use labels::{
    ControlPlane, DISPLAY_NAME_LABEL, ENV_LABEL, Labels, MESH_LABEL, ORIGIN_GLOBAL, ORIGIN_LABEL,
    ZONE_LABEL, ZONE_NAME_RULE, check_immutable_labels, computed_labels, is_zone_name,
};
pub use mesh::{Mesh, MeshSpec, MeshUpdate, NewMesh};
pub use name::{MAX_MESH_NAME_LEN, MAX_NAME_LEN, MESH_NAME_TOO_LONG, MeshName, ResourceName};
pub use secret::{
    ADMIN_TOKEN_SECRET, DEFAULT_MAX_SECRET_SIZE, NewSecret, REVOCATIONS_SECRET, SIGNING_KEY_PREFIX,
    Secret, SecretData, SecretKey, SecretType, SecretUpdate, ZONE_PUBLIC_KEY_PREFIX,
    ZONE_REVOCATIONS_SECRET, ZONE_SIGNING_KEY_PREFIX,
};
pub use validation::{NUL_REASON, ValidationError, Violation, reject_nul, reject_nul_in_json};

use chrono::{DateTime, Utc};
use std::fmt;

/// A resource as a user writes it, before the store gives it a version: a Mesh, or a
/// Secret or GlobalSecret. What `apply`, `import` and `copy` carry.
#[derive(Debug, Clone)]
pub enum Resource {
    /// A Mesh.
    Mesh(NewMesh),
    /// A Secret or a GlobalSecret.
    Secret(NewSecret),
    /// An ExternalService.
    ExternalService(NewExternalService),
}

impl Resource {
    /// Its identity, as Kuma prints it.
    pub fn key(&self) -> ResourceKey {
        match self {
            Resource::Mesh(mesh) => ResourceKey::mesh(&mesh.name),
            Resource::Secret(secret) => secret.key.resource_key(),
            Resource::ExternalService(service) => service.key(),
        }
    }
}

/// A field of a resource that names a Secret of its Mesh: one row of the store's table of
/// references, which the Secret delete guard and `_usage` read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretReferrer {
    /// The referrer's type (`ExternalService`).
    pub referrer_type: String,
    /// The referrer's name, in the Secret's Mesh.
    pub referrer: String,
    /// The field, as Kuma's validation paths spell it (`networking.tls.clientKey`).
    pub field: String,
}

/// Version and timestamps of a stored resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Starts at 1 on create and goes up by exactly 1 on every change.
    pub version: i64,
    /// When the resource was created (UTC, microsecond precision).
    pub creation_time: DateTime<Utc>,
    /// When the resource last changed (UTC, microsecond precision).
    pub modification_time: DateTime<Utc>,
}

/// A resource identity as Kuma's store errors print it:
/// `type="Secret" name="x" mesh="default"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceKey {
    /// `Secret`, `GlobalSecret` or `Mesh`.
    pub resource_type: &'static str,
    /// The mesh, `None` for global resources.
    pub mesh: Option<String>,
    /// The name.
    pub name: String,
}

impl ResourceKey {
    /// The key of Mesh `name`.
    pub fn mesh(name: &MeshName) -> Self {
        Self {
            resource_type: "Mesh",
            mesh: None,
            name: name.as_str().to_owned(),
        }
    }
}

impl fmt::Display for ResourceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "type={:?} name={:?} mesh={:?}",
            self.resource_type,
            self.name,
            self.mesh.as_deref().unwrap_or("")
        )
    }
}
