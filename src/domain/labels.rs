//! Labels: a string map whose keys and values follow the Kubernetes rules, reported with the
//! Kubernetes messages, as Kuma's API server does (`validateLabels`).

use super::name::is_rfc1123_subdomain;
use super::{MeshName, ValidationError};
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

const QUALIFIED_NAME_RULE: &str = "must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";
const SUBDOMAIN_RULE: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_VALUE_RULE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";

/// A validated label set, kept sorted by key (so JSON output is stable).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(transparent)]
pub struct Labels(BTreeMap<String, String>);

impl Labels {
    /// Validates every key and value, collecting all violations under `labels["<key>"]`.
    ///
    /// # Errors
    /// Keys that are not Kubernetes qualified names, values that are not label values.
    pub fn parse(map: BTreeMap<String, String>) -> Result<Self, ValidationError> {
        let mut errors = ValidationError::default();
        for (key, value) in &map {
            let field = format!("labels[{key:?}]");
            for reason in qualified_name_errors(key) {
                errors.push(&field, reason);
            }
            for reason in label_value_errors(value) {
                errors.push(&field, reason);
            }
        }
        errors.into_result(|| Self(map))
    }

    /// Builds labels from pairs, validating them.
    ///
    /// # Errors
    /// See [`Labels::parse`].
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<Self, ValidationError> {
        Self::parse(
            pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }

    /// The label map.
    pub fn as_map(&self) -> &BTreeMap<String, String> {
        &self.0
    }

    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// True if there are no labels.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over (key, value) pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Unchecked construction from rows the store wrote itself.
    pub(crate) fn from_stored(map: BTreeMap<String, String>) -> Self {
        Self(map)
    }
}

/// Kubernetes `IsQualifiedName`: `[prefix/]name`.
fn qualified_name_errors(key: &str) -> Vec<String> {
    let mut errors = Vec::new();
    let parts: Vec<&str> = key.split('/').collect();
    let name = match parts.as_slice() {
        [name] => *name,
        [prefix, name] => {
            if prefix.is_empty() {
                errors.push("prefix part must be non-empty".to_owned());
            } else {
                if prefix.len() > 253 {
                    errors.push("prefix part must be no more than 253 characters".to_owned());
                }
                if !is_rfc1123_subdomain(prefix) {
                    errors.push(format!("prefix part {SUBDOMAIN_RULE}"));
                }
            }
            *name
        }
        _ => {
            errors.push(format!(
                "a valid label key {QUALIFIED_NAME_RULE} with an optional DNS subdomain prefix and '/' (e.g. 'example.com/MyName')"
            ));
            return errors;
        }
    };
    if name.is_empty() {
        errors.push("name part must be non-empty".to_owned());
    } else if name.len() > 63 {
        errors.push("name part must be no more than 63 characters".to_owned());
    }
    if !is_label_token(name) {
        errors.push(format!("name part {QUALIFIED_NAME_RULE}"));
    }
    errors
}

/// Kubernetes `IsValidLabelValue`.
fn label_value_errors(value: &str) -> Vec<String> {
    let mut errors = Vec::new();
    if value.len() > 63 {
        errors.push("must be no more than 63 characters".to_owned());
    }
    if !value.is_empty() && !is_label_token(value) {
        errors.push(LABEL_VALUE_RULE.to_owned());
    }
    errors
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`
fn is_label_token(s: &str) -> bool {
    let bytes = s.as_bytes();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            first.is_ascii_alphanumeric()
                && last.is_ascii_alphanumeric()
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(b))
        }
        _ => false,
    }
}

/// What a federated zone's name must be, said to whoever gave another.
pub const ZONE_NAME_RULE: &str = "a federated zone's name is a lowercase DNS label (up to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)";

/// Whether `zone` may name a federated zone: [`ZONE_NAME_RULE`].
pub fn is_zone_name(zone: &str) -> bool {
    zone.len() <= 63
        && zone.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && zone.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && zone
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Which control plane this is, as Kuma's `mode` (with whether a zone is federated): it
/// decides the labels computed on write and what may be written here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlPlane {
    /// A zone control plane named `name`: standalone (the default: a zone named
    /// `default`, following no global store), or `federated`, following a global store that
    /// owns its Meshes and the Secrets and GlobalSecrets made there.
    Zone {
        /// The zone's name (`kuma.io/zone`).
        name: String,
        /// Whether it follows a global store.
        federated: bool,
    },
    /// The global control plane of a multi-zone deployment: what is written here is synced
    /// to every zone.
    Global,
}

impl Default for ControlPlane {
    fn default() -> Self {
        Self::standalone("default")
    }
}

impl ControlPlane {
    /// A zone control plane named `name` that follows no global store.
    pub fn standalone(name: &str) -> Self {
        Self::Zone {
            name: name.to_owned(),
            federated: false,
        }
    }

    /// Whether this is a zone that follows a global store.
    pub fn is_federated_zone(&self) -> bool {
        matches!(
            self,
            Self::Zone {
                federated: true,
                ..
            }
        )
    }

    /// Kuma's `mode`: `zone` or `global`.
    pub fn mode(&self) -> &'static str {
        match self {
            Self::Zone { .. } => "zone",
            Self::Global => "global",
        }
    }
}

/// The origin label of resources a zone holds from the global store.
pub const ORIGIN_GLOBAL: &str = "global";

/// Kuma's labels computed on write (reference §3.5) on the control plane `cp`:
/// `kuma.io/mesh` on mesh-scoped resources; on a zone, also `kuma.io/origin`, `kuma.io/zone`
/// and `kuma.io/env`. User labels are kept; then the rules of `validateLabels` apply (on
/// the global control plane an origin label must say `global`; on a zone, a zone-origin
/// resource must name this zone and its own mesh).
///
/// # Errors
/// Every violation of the label rules, as `labels["<key>"]` fields.
pub fn computed_labels(
    given: BTreeMap<String, String>,
    mesh: Option<&MeshName>,
    cp: &ControlPlane,
) -> Result<Labels, ValidationError> {
    let mut labels = given;
    if let Some(mesh) = mesh {
        labels
            .entry(MESH_LABEL.to_owned())
            .or_insert_with(|| mesh.as_str().to_owned());
    }
    let zone = match cp {
        ControlPlane::Zone { name, .. } => {
            labels
                .entry(ORIGIN_LABEL.to_owned())
                .or_insert_with(|| "zone".to_owned());
            Some(name.as_str())
        }
        ControlPlane::Global => None,
    };
    let mut errors = ValidationError::default();
    let origin = labels.get(ORIGIN_LABEL).cloned().unwrap_or_default();
    match (origin.as_str(), zone) {
        ("zone", None) => errors.push(
            format!("labels[{ORIGIN_LABEL:?}]"),
            "the origin label must be set to 'global'",
        ),
        ("" | "global", None) => {}
        ("zone", Some(zone)) => {
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
        ("global", Some(_)) => {}
        (other, _) => errors.push(
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
    fn kubernetes_style_labels_are_accepted() {
        let labels =
            Labels::from_pairs([("kuma.io/mesh", "default"), ("env", ""), ("A_b.c", "X-1")]);
        assert!(labels.is_ok());
    }

    #[test]
    fn every_bad_label_is_reported_with_its_key() {
        let err = Labels::from_pairs([
            ("bad key", "ok"),
            ("ok", "bad value!"),
            ("a/b/c", "x"),
            ("/x", "y"),
        ])
        .unwrap_err();
        let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
        assert_eq!(
            fields,
            [
                r#"labels["/x"]"#,
                r#"labels["a/b/c"]"#,
                r#"labels["bad key"]"#,
                r#"labels["ok"]"#
            ]
        );
        assert!(
            err.violations[0]
                .reason
                .starts_with("prefix part must be non-empty")
        );
        assert!(
            err.violations[3]
                .reason
                .starts_with("a valid label must be")
        );
    }

    #[test]
    fn label_values_longer_than_63_are_rejected() {
        let err = Labels::from_pairs([("k", "v".repeat(64))]).unwrap_err();
        assert_eq!(
            err.violations[0].reason,
            "must be no more than 63 characters"
        );
    }

    #[test]
    fn kuma_labels_are_computed_and_checked() {
        let mesh = MeshName::parse("default").unwrap();
        let labels =
            computed_labels(BTreeMap::new(), Some(&mesh), &ControlPlane::default()).unwrap();
        assert_eq!(labels.get(MESH_LABEL), Some("default"));
        assert_eq!(labels.get(ORIGIN_LABEL), Some("zone"));
        assert_eq!(labels.get(ZONE_LABEL), Some("default"));
        assert_eq!(labels.get(ENV_LABEL), Some("universal"));

        let bad: BTreeMap<_, _> = [
            (ORIGIN_LABEL.to_owned(), "mars".to_owned()),
            ("bad key!".to_owned(), "v".to_owned()),
        ]
        .into();
        let err = computed_labels(bad, None, &ControlPlane::default()).unwrap_err();
        assert_eq!(err.violations.len(), 2);
        assert_eq!(
            err.violations[0].reason,
            r#"unknown resource origin "mars""#
        );

        let wrong_mesh: BTreeMap<_, _> = [(MESH_LABEL.to_owned(), "other".to_owned())].into();
        let err = computed_labels(wrong_mesh, Some(&mesh), &ControlPlane::default()).unwrap_err();
        assert_eq!(
            err.violations[0].reason,
            "kuma.io/mesh label must not differ from mesh set on resource"
        );
    }

    #[test]
    fn the_global_control_plane_computes_the_mesh_label_only() {
        let mesh = MeshName::parse("default").unwrap();
        let labels = computed_labels(BTreeMap::new(), Some(&mesh), &ControlPlane::Global).unwrap();
        assert_eq!(labels.get(MESH_LABEL), Some("default"));
        assert_eq!(labels.get(ORIGIN_LABEL), None);
        assert_eq!(labels.get(ZONE_LABEL), None);
        let global: BTreeMap<_, _> = [(ORIGIN_LABEL.to_owned(), "global".to_owned())].into();
        assert!(computed_labels(global, None, &ControlPlane::Global).is_ok());
        let zone: BTreeMap<_, _> = [(ORIGIN_LABEL.to_owned(), "zone".to_owned())].into();
        let err = computed_labels(zone, None, &ControlPlane::Global).unwrap_err();
        assert_eq!(
            err.violations[0].reason,
            "the origin label must be set to 'global'"
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
