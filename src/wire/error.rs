//! Kuma's error body (`pkg/core/rest/errors`), with the deprecated `details`/`causes`
//! mirrors old clients read. The API writes it; the client reads it.

use serde::{Deserialize, Serialize};

/// One field violation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvalidParameter {
    /// The field, e.g. `name` or `labels["k"]`.
    pub field: String,
    /// Why it is invalid.
    pub reason: String,
}

/// One field violation, in the deprecated shape.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cause {
    /// The field.
    pub field: String,
    /// Why it is invalid.
    pub message: String,
}

/// `{"type":"/std-errors","status","title","detail","invalid_parameters",…}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Always `/std-errors`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// HTTP status.
    #[serde(default)]
    pub status: u16,
    /// What failed, e.g. "Could not retrieve a resource".
    #[serde(default)]
    pub title: String,
    /// Why.
    #[serde(default)]
    pub detail: String,
    /// Field violations.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub invalid_parameters: Vec<InvalidParameter>,
    /// The detail again (deprecated).
    #[serde(default)]
    pub details: String,
    /// The violations again (deprecated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<Cause>,
}
