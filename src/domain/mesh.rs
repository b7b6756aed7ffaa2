//! The `Mesh` resource. Its spec is kept as the JSON object the user gave: only its `mtls`
//! section means something to this store (`domain::mtls` reads it); every other field is
//! stored and returned as given.

use super::{Labels, MeshName, Meta};

/// A Mesh's spec fields (everything but `type`, `name`, labels and timestamps).
pub type MeshSpec = serde_json::Map<String, serde_json::Value>;

/// A Mesh to create.
#[derive(Debug, Clone)]
pub struct NewMesh {
    /// Its name.
    pub name: MeshName,
    /// Its spec fields.
    pub spec: MeshSpec,
    /// Its labels.
    pub labels: Labels,
}

/// The new contents of an existing Mesh. Spec and labels are replaced.
#[derive(Debug, Clone)]
pub struct MeshUpdate {
    /// The new spec fields.
    pub spec: MeshSpec,
    /// The new label set.
    pub labels: Labels,
}

/// A stored Mesh.
#[derive(Debug, Clone, PartialEq)]
pub struct Mesh {
    /// Its name.
    pub name: MeshName,
    /// Its spec fields.
    pub spec: MeshSpec,
    /// Its labels.
    pub labels: Labels,
    /// Version and timestamps.
    pub meta: Meta,
}
