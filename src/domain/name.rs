//! Resource and mesh names, validated with Kuma's rules and messages
//! (`pkg/core/resources/apis/mesh/meta_validator.go`, `mesh_validator.go`).

use super::ValidationError;
use std::fmt;

/// Longest resource name Kuma accepts (`name varchar(253)`).
pub const MAX_NAME_LEN: usize = 253;
/// Longest mesh name Kuma accepts when a Mesh is created.
pub const MAX_MESH_NAME_LEN: usize = 63;

const RFC1123_MESSAGE: &str = "invalid characters. A lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character";
const MESH_CHARS_MESSAGE: &str = "invalid characters. Valid characters are numbers, lowercase latin letters and '-', '_', '.' symbols.";

/// The name of a Secret, GlobalSecret or Mesh: a lowercase RFC 1123 subdomain of at most 253
/// characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct ResourceName(String);

impl ResourceName {
    /// Validates `name`, reporting violations against `field`.
    ///
    /// # Errors
    /// Kuma's messages: empty, longer than 253, or not an RFC 1123 subdomain.
    pub fn parse_field(name: &str, field: &str) -> Result<Self, ValidationError> {
        check_name(
            name,
            field,
            (MAX_NAME_LEN, "value length must less or equal 253"),
            (is_rfc1123_subdomain, RFC1123_MESSAGE),
        )?;
        Ok(Self(name.to_owned()))
    }

    /// Validates `name` as the `name` field.
    ///
    /// # Errors
    /// See [`ResourceName::parse_field`].
    pub fn parse(name: &str) -> Result<Self, ValidationError> {
        Self::parse_field(name, "name")
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Unchecked construction from rows the store wrote itself.
    pub(crate) fn from_stored(name: String) -> Self {
        Self(name)
    }
}

/// Kuma's message for a Mesh name over 63 characters.
pub const MESH_NAME_TOO_LONG: &str = "cannot be longer than 63 characters";

/// The name of a Mesh: Kuma's backward-compatible mesh alphabet (`^[0-9a-z-_.]*$`), at most
/// 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(transparent)]
pub struct MeshName(String);

impl MeshName {
    /// Validates a mesh name, reporting violations against `field`.
    ///
    /// # Errors
    /// Empty, longer than 63, or characters outside `[0-9a-z-_.]`.
    pub fn parse_field(mesh: &str, field: &str) -> Result<Self, ValidationError> {
        check_name(
            mesh,
            field,
            (MAX_MESH_NAME_LEN, MESH_NAME_TOO_LONG),
            (is_mesh_alphabet, MESH_CHARS_MESSAGE),
        )?;
        Ok(Self(mesh.to_owned()))
    }

    /// Validates a mesh name as the `mesh` field.
    ///
    /// # Errors
    /// See [`MeshName::parse_field`].
    pub fn parse(mesh: &str) -> Result<Self, ValidationError> {
        Self::parse_field(mesh, "mesh")
    }

    /// Validates the name of a Mesh being created: a mesh name that is also an RFC 1123
    /// subdomain, since a Mesh is itself a named resource.
    ///
    /// # Errors
    /// The union of [`MeshName::parse_field`] and [`ResourceName::parse_field`] rules.
    pub fn parse_new(mesh: &str) -> Result<Self, ValidationError> {
        let parsed = Self::parse_field(mesh, "name")?;
        ResourceName::parse_field(mesh, "name")?;
        Ok(parsed)
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Unchecked construction from rows the store wrote itself.
    pub(crate) fn from_stored(name: String) -> Self {
        Self(name)
    }
}

/// Kuma's checks of a name, in its order: not empty, at most `max` bytes (else `too_long`),
/// then `valid` (else `invalid`); the first that fails is the one violation of `field`.
fn check_name(
    name: &str,
    field: &str,
    (max, too_long): (usize, &str),
    (valid, invalid): (fn(&str) -> bool, &str),
) -> Result<(), ValidationError> {
    let reason = if name.is_empty() {
        "cannot be empty"
    } else if name.len() > max {
        too_long
    } else if !valid(name) {
        invalid
    } else {
        return Ok(());
    };
    Err(ValidationError::single(field, reason))
}

/// Kuma's backward-compatible mesh alphabet: `[0-9a-z-_.]`.
fn is_mesh_alphabet(mesh: &str) -> bool {
    mesh.bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b))
}

impl fmt::Display for ResourceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for MeshName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`
pub(crate) fn is_rfc1123_subdomain(s: &str) -> bool {
    !s.is_empty() && s.split('.').all(is_rfc1123_label)
}

fn is_rfc1123_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    match (bytes.first(), bytes.last()) {
        (Some(first), Some(last)) => {
            alnum(first) && alnum(last) && bytes.iter().all(|b| alnum(b) || *b == b'-')
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_names_follow_rfc1123() {
        for ok in ["a", "sec-1", "a.b-c.d", "0abc", "x".repeat(253).as_str()] {
            assert!(ResourceName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "A", "a..b", "a_b", ".a", "a.", "é", "a b"] {
            assert!(ResourceName::parse(bad).is_err(), "{bad:?}");
        }
        let too_long = ResourceName::parse(&"x".repeat(254)).unwrap_err();
        assert_eq!(
            too_long.violations[0].reason,
            "value length must less or equal 253"
        );
    }

    #[test]
    fn mesh_names_use_kumas_alphabet_and_length() {
        assert!(MeshName::parse("default").is_ok());
        assert!(MeshName::parse("my_mesh.1-2").is_ok());
        assert_eq!(
            MeshName::parse("Mesh").unwrap_err().violations[0].reason,
            MESH_CHARS_MESSAGE
        );
        assert_eq!(
            MeshName::parse(&"m".repeat(64)).unwrap_err().violations[0].reason,
            "cannot be longer than 63 characters"
        );
        assert!(MeshName::parse_new("my_mesh").is_err());
    }
}
