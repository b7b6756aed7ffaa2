//! A Mesh's mTLS spec (`mtls.enabledBackend`, `mtls.skipValidation`, `mtls.backends[]`), as
//! Kuma reads it, and what it means for secrets: which secrets each backend uses (the delete
//! guard and the usage index), which it needs generated (builtin CAs), and the structural
//! checks with Kuma's messages (reference §2.5, §2.6). Checks that need secret data (does
//! the referenced secret exist, is the pair a CA) live in the store and in `crate::ca`.

use super::{MeshName, MeshSpec, ValidationError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;

/// `builtin`: the control plane generates and keeps the CA.
pub const BUILTIN: &str = "builtin";
/// `provided`: the user gives the CA certificate and key.
pub const PROVIDED: &str = "provided";

/// Where a provided CA's certificate or key comes from (Kuma's `DataSource`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataSource {
    /// `{secret: NAME}`: a Secret of the same mesh.
    Secret(String),
    /// `{inline: BASE64}` or `{inlineString: TEXT}`: the bytes themselves.
    Inline(Vec<u8>),
    /// `{file: PATH}`: a file on the control plane (accepted, not read by this store).
    File(String),
}

/// Kuma's data-source load error for a `secret:` that names no Secret of the Mesh, what a
/// Mesh's provided CA and an ExternalService's TLS both report.
pub fn missing_secret_message(name: &str, mesh: &MeshName) -> String {
    format!(
        "could not load data: resource not found: type=\"Secret\" name={name:?} mesh={:?}",
        mesh.as_str()
    )
}

/// One CA backend.
#[derive(Debug, Clone, PartialEq)]
pub struct CaBackend {
    /// Its name, unique in the mesh.
    pub name: String,
    /// `builtin` or `provided`.
    pub kind: String,
    /// For `provided`: the certificate source.
    pub cert: Option<DataSource>,
    /// For `provided`: the key source.
    pub key: Option<DataSource>,
}

/// A Mesh's `mtls` section.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mtls {
    /// The backend in use; empty when mTLS is off.
    pub enabled_backend: String,
    /// Skip the checks that load and verify secrets (Kuma's `skipValidation`).
    pub skip_validation: bool,
    /// Every backend, enabled or not.
    pub backends: Vec<CaBackend>,
}

/// A secret used by a backend.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretUse {
    /// The backend's name.
    pub backend: String,
    /// The secret's name, in the Mesh's own mesh.
    pub secret: String,
    /// Where: [`backend_field`] of the backend and the CA part (`cert` or `key`).
    pub field: String,
}

/// The field of a backend's CA part (`cert` or `key`) in the store's table of references:
/// `mtls.backends["ca-1"].conf.cert`. By name, not index, so the delete guard can name the
/// backend in Kuma's message without reading the Mesh.
pub fn backend_field(backend: &str, part: &str) -> String {
    let quoted = serde_json::to_string(backend).unwrap_or_default();
    format!("mtls.backends[{quoted}].conf.{part}")
}

/// The backend a [`backend_field`] names.
pub fn backend_of_field(field: &str) -> Option<String> {
    let rest = field.strip_prefix("mtls.backends[")?;
    let end = rest.rfind("].conf.")?;
    serde_json::from_str(&rest[..end]).ok()
}

/// The names of the Secrets a builtin backend keeps its CA in:
/// `{mesh}.ca-builtin-cert-{backend}` and `{mesh}.ca-builtin-key-{backend}`.
pub fn builtin_ca_names(mesh: &MeshName, backend: &str) -> (String, String) {
    (
        format!("{}.ca-builtin-cert-{backend}", mesh.as_str()),
        format!("{}.ca-builtin-key-{backend}", mesh.as_str()),
    )
}

impl Mtls {
    /// Reads the `mtls` section of `spec` (`None` without one), with every structural
    /// problem as a violation under `mtls.…`.
    ///
    /// # Errors
    /// The violations, all of them.
    pub fn of(spec: &MeshSpec, mesh: &MeshName) -> Result<Option<Self>, ValidationError> {
        let Some(mtls) = spec.get("mtls").filter(|v| !v.is_null()) else {
            return Ok(None);
        };
        let mut errors = ValidationError::default();
        let Value::Object(mtls) = mtls else {
            return Err(ValidationError::single("mtls", "must be an object"));
        };
        let mut parsed = Mtls::default();
        match mtls.get("enabledBackend") {
            None | Some(Value::Null) => {}
            Some(Value::String(name)) => parsed.enabled_backend = name.clone(),
            Some(_) => errors.push("mtls.enabledBackend", "must be a string"),
        }
        match mtls.get("skipValidation") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(skip)) => parsed.skip_validation = *skip,
            Some(_) => errors.push("mtls.skipValidation", "must be a boolean"),
        }
        match mtls.get("backends") {
            None | Some(Value::Null) => {}
            Some(Value::Array(backends)) => {
                for (i, backend) in backends.iter().enumerate() {
                    if let Some(backend) = parse_backend(backend, i, mesh, &mut errors) {
                        if parsed.backends.iter().any(|b| b.name == backend.name) {
                            errors.push(
                                format!("mtls.backends[{i}].name"),
                                format!("{:?} is already used for another backend", backend.name),
                            );
                        }
                        parsed.backends.push(backend);
                    }
                }
            }
            Some(_) => errors.push("mtls.backends", "must be a list"),
        }
        if !parsed.enabled_backend.is_empty()
            && errors.is_empty()
            && !parsed
                .backends
                .iter()
                .any(|b| b.name == parsed.enabled_backend)
        {
            errors.push(
                "mtls.enabledBackend",
                "has to be set to one of the backends in the mesh",
            );
        }
        if errors.is_empty() {
            Ok(Some(parsed))
        } else {
            Err(errors)
        }
    }

    /// mTLS is on: a backend is enabled.
    pub fn enabled(&self) -> bool {
        !self.enabled_backend.is_empty()
    }

    /// Every secret the backends use, enabled or not: a builtin backend's two generated
    /// secrets, a provided backend's `secret` sources (Kuma's `UsedSecrets`).
    pub fn used_secrets(&self, mesh: &MeshName) -> Vec<SecretUse> {
        let mut uses = Vec::new();
        for backend in &self.backends {
            match backend.kind.as_str() {
                BUILTIN => {
                    let (cert, key) = builtin_ca_names(mesh, &backend.name);
                    for (part, secret) in [("cert", cert), ("key", key)] {
                        uses.push(SecretUse {
                            backend: backend.name.clone(),
                            secret,
                            field: backend_field(&backend.name, part),
                        });
                    }
                }
                _ => {
                    for (part, source) in [("cert", &backend.cert), ("key", &backend.key)] {
                        if let Some(DataSource::Secret(secret)) = source {
                            uses.push(SecretUse {
                                backend: backend.name.clone(),
                                secret: secret.clone(),
                                field: backend_field(&backend.name, part),
                            });
                        }
                    }
                }
            }
        }
        uses
    }

    /// The builtin backends, whose CA secrets must exist.
    pub fn builtin_backends(&self) -> impl Iterator<Item = &CaBackend> {
        self.backends.iter().filter(|b| b.kind == BUILTIN)
    }

    /// Kuma's rule on update: the CA cannot change while mTLS is on.
    ///
    /// # Errors
    /// The `mtls.enabledBackend` violation.
    pub fn check_change(current: Option<&Mtls>, new: Option<&Mtls>) -> Result<(), ValidationError> {
        if let (Some(current), Some(new)) = (current, new)
            && current.enabled()
            && new.enabled()
            && current.enabled_backend != new.enabled_backend
        {
            return Err(ValidationError::single(
                "mtls.enabledBackend",
                "Changing CA when mTLS is enabled is forbidden. Disable mTLS first and then change the CA",
            ));
        }
        Ok(())
    }
}

fn parse_backend(
    value: &Value,
    i: usize,
    mesh: &MeshName,
    errors: &mut ValidationError,
) -> Option<CaBackend> {
    let at = |field: &str| format!("mtls.backends[{i}]{field}");
    let Value::Object(backend) = value else {
        errors.push(at(""), "must be an object");
        return None;
    };
    let name = backend.get("name").and_then(Value::as_str).unwrap_or("");
    if name.is_empty() {
        errors.push(at(".name"), "cannot be empty");
    }
    let kind = backend.get("type").and_then(Value::as_str).unwrap_or("");
    let conf = backend.get("conf").and_then(Value::as_object);
    let mut parsed = CaBackend {
        name: name.to_owned(),
        kind: kind.to_owned(),
        cert: None,
        key: None,
    };
    match kind {
        BUILTIN => {
            // The generated secrets are named after the backend, so its name must make
            // valid secret names whatever `skipValidation` says.
            let (cert, _) = builtin_ca_names(mesh, name);
            if cert.len() > 255 {
                errors.push(at(".name"), "Backend name is too long. Max length: 255");
            } else if !name.is_empty() && super::ResourceName::parse(&cert).is_err() {
                errors.push(at(".name"), format!("{name:?} name must be valid dns name"));
            }
        }
        PROVIDED => {
            for (field, slot) in [("cert", &mut parsed.cert), ("key", &mut parsed.key)] {
                let path = at(&format!(".conf.{field}"));
                match conf.and_then(|c| c.get(field)) {
                    None | Some(Value::Null) => errors.push(path, "has to be defined"),
                    Some(source) => *slot = parse_source(source, &path, errors),
                }
            }
        }
        _ => errors.push(at(".type"), "could not find installed plugin for this type"),
    }
    Some(parsed)
}

/// Whether Kuma's Mesh validator reports `violation` (the spec's own consistency: a
/// backend name used twice, an `enabledBackend` naming no backend, a field of the wrong
/// type), before anything is written. Every other mTLS violation comes from Kuma's CA
/// managers as the Mesh is created or updated (an unknown backend type, a provided
/// backend's config, its secrets and certificates, a CA change while mTLS is on), and
/// Kuma's API titles those by that stage.
pub fn is_spec_violation(violation: &crate::domain::Violation) -> bool {
    violation
        .reason
        .ends_with("is already used for another backend")
        || violation.reason == "has to be set to one of the backends in the mesh"
        || violation.reason.starts_with("must be ")
}

/// The fields of Kuma's `DataSource` oneof, in its field order.
const DATA_SOURCE_FIELDS: [&str; 4] = ["secret", "file", "inline", "inlineString"];

fn parse_source(value: &Value, path: &str, errors: &mut ValidationError) -> Option<DataSource> {
    let Value::Object(source) = value else {
        errors.push(path, "must be an object");
        return None;
    };
    let text = |key: &str| source.get(key).and_then(Value::as_str);
    // Kuma's DataSource is a protobuf `oneof`: a second field is refused as protojson
    // refuses it. Stored, the field not chosen would stay beside the sealed one, in clear.
    let given: Vec<&str> = DATA_SOURCE_FIELDS
        .into_iter()
        .filter(|field| source.contains_key(*field))
        .collect();
    if let [_, second, ..] = given[..] {
        errors.push(
            path,
            format!("error parsing {second:?}, oneof kuma.system.v1alpha1.DataSource.type is already set"),
        );
        return None;
    }
    if let Some(secret) = text("secret") {
        if secret.is_empty() {
            errors.push(format!("{path}.secret"), "cannot be empty");
            return None;
        }
        return Some(DataSource::Secret(secret.to_owned()));
    }
    if let Some(inline) = text("inline") {
        if inline.is_empty() {
            errors.push(format!("{path}.inline"), "cannot be empty");
            return None;
        }
        return match STANDARD.decode(inline) {
            Ok(bytes) => Some(DataSource::Inline(bytes)),
            Err(_) => {
                errors.push(format!("{path}.inline"), "must be base64");
                None
            }
        };
    }
    if let Some(inline) = text("inlineString") {
        if inline.is_empty() {
            errors.push(format!("{path}.inlineString"), "cannot be empty");
            return None;
        }
        return Some(DataSource::Inline(inline.as_bytes().to_vec()));
    }
    if let Some(file) = text("file") {
        if file.is_empty() {
            errors.push(format!("{path}.file"), "cannot be empty");
            return None;
        }
        return Some(DataSource::File(file.to_owned()));
    }
    errors.push(
        path,
        "data source has to be chosen. Available sources: secret, file, inline",
    );
    None
}

/// Accepts `config` as another spelling of a backend's `conf` (Kuma's Secrets page writes
/// `config:`), rewriting it to `conf` so it is stored and returned as Kuma's field.
///
/// # Errors
/// A backend that gives both.
pub fn normalize_spec(spec: &mut MeshSpec) -> Result<(), ValidationError> {
    let Some(Value::Array(backends)) = spec
        .get_mut("mtls")
        .and_then(Value::as_object_mut)
        .and_then(|mtls| mtls.get_mut("backends"))
    else {
        return Ok(());
    };
    let mut errors = ValidationError::default();
    for (i, backend) in backends.iter_mut().enumerate() {
        let Some(backend) = backend.as_object_mut() else {
            continue;
        };
        if let Some(config) = backend.remove("config") {
            if backend.contains_key("conf") {
                errors.push(
                    format!("mtls.backends[{i}].config"),
                    "conf and config are two spellings of one field: give one",
                );
            } else {
                backend.insert("conf".into(), config);
            }
        }
    }
    errors.into_result(|| ())
}

/// What a caller who is not an admin sees in place of an inline CA private key.
pub const REDACTED_KEY: &str = "private key material is shown to admins only";

/// Hides the inline private keys of provided CA backends (`conf.key` given as `inline` or
/// `inlineString`) from a spec about to be shown to a caller who is not an admin. Keys
/// kept in Secrets (`{secret: NAME}`) are only names and stay.
pub fn redact_private_keys(spec: &mut MeshSpec) {
    let Some(Value::Array(backends)) = spec
        .get_mut("mtls")
        .and_then(Value::as_object_mut)
        .and_then(|mtls| mtls.get_mut("backends"))
    else {
        return;
    };
    for key in backends
        .iter_mut()
        .filter_map(|b| b.get_mut("conf"))
        .filter_map(|c| c.get_mut("key"))
        .filter_map(Value::as_object_mut)
    {
        if key.contains_key("inline") || key.contains_key("inlineString") {
            key.clear();
            key.insert("redacted".into(), Value::String(REDACTED_KEY.into()));
        }
    }
}

/// Kuma's delete-guard message for a secret in use.
pub fn in_use_message(secret: &str, mesh: &str, backend: &str) -> String {
    format!(
        "The secret {secret:?} that you are trying to remove is currently in use in Mesh {mesh:?} in mTLS backend {backend:?}. Please remove the reference from the {backend:?} backend before removing the secret."
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(value: Value) -> MeshSpec {
        value.as_object().unwrap().clone()
    }

    fn mesh() -> MeshName {
        MeshName::parse("default").unwrap()
    }

    #[test]
    fn the_seeds_example_reads_and_uses_two_secrets() {
        let mtls = Mtls::of(
            &spec(json!({"mtls": {"enabledBackend": "ca-1", "backends": [
                {"name": "ca-1", "type": "provided", "conf": {"cert": {"secret": "my-cert"}, "key": {"secret": "my-key"}}}
            ]}})),
            &mesh(),
        )
        .unwrap()
        .unwrap();
        assert!(mtls.enabled());
        let used: Vec<String> = mtls
            .used_secrets(&mesh())
            .into_iter()
            .map(|u| u.secret)
            .collect();
        assert_eq!(used, ["my-cert", "my-key"]);
    }

    #[test]
    fn builtin_backends_use_their_generated_secrets() {
        let mtls = Mtls::of(
            &spec(json!({"mtls": {"backends": [{"name": "ca-1", "type": "builtin"}]}})),
            &mesh(),
        )
        .unwrap()
        .unwrap();
        let used: Vec<String> = mtls
            .used_secrets(&mesh())
            .into_iter()
            .map(|u| u.secret)
            .collect();
        assert_eq!(
            used,
            [
                "default.ca-builtin-cert-ca-1",
                "default.ca-builtin-key-ca-1"
            ]
        );
    }

    #[test]
    fn structural_problems_get_kumas_messages() {
        let err = Mtls::of(
            &spec(json!({"mtls": {"enabledBackend": "x", "backends": [
                {"name": "a", "type": "vault"},
                {"name": "b", "type": "provided", "conf": {"cert": {}}},
                {"name": "c", "type": "provided", "conf": {"cert": {"secret": ""}, "key": {"inline": ""}}},
                {"name": "Bad Name", "type": "builtin"}
            ]}})),
            &mesh(),
        )
        .unwrap_err()
        .to_string();
        for expected in [
            "mtls.backends[0].type: could not find installed plugin for this type",
            "mtls.backends[1].conf.cert: data source has to be chosen. Available sources: secret, file, inline",
            "mtls.backends[1].conf.key: has to be defined",
            "mtls.backends[2].conf.cert.secret: cannot be empty",
            "mtls.backends[2].conf.key.inline: cannot be empty",
            "mtls.backends[3].name: \"Bad Name\" name must be valid dns name",
        ] {
            assert!(err.contains(expected), "{expected} in {err}");
        }
    }

    #[test]
    fn config_is_another_spelling_of_conf_but_not_both() {
        let mut given = spec(json!({"mtls": {"backends": [
            {"name": "ca-1", "type": "provided", "config": {"cert": {"secret": "c"}, "key": {"secret": "k"}}}
        ]}}));
        normalize_spec(&mut given).unwrap();
        assert_eq!(given["mtls"]["backends"][0]["conf"]["cert"]["secret"], "c");
        assert!(given["mtls"]["backends"][0].get("config").is_none());
        let mut both = spec(json!({"mtls": {"backends": [
            {"name": "ca-1", "type": "provided", "conf": {}, "config": {}}
        ]}}));
        let err = normalize_spec(&mut both).unwrap_err();
        assert_eq!(err.violations[0].field, "mtls.backends[0].config");
    }

    #[test]
    fn changing_the_enabled_backend_while_on_is_refused() {
        let on = |b: &str| Mtls {
            enabled_backend: b.into(),
            ..Mtls::default()
        };
        assert!(Mtls::check_change(Some(&on("a")), Some(&on("b"))).is_err());
        assert!(Mtls::check_change(Some(&on("a")), Some(&on(""))).is_ok());
        assert!(Mtls::check_change(Some(&on("")), Some(&on("b"))).is_ok());
    }

    #[test]
    fn a_backend_field_names_its_backend_whatever_the_name() {
        for name in ["ca-1", "a\"].conf.b", "ü", ""] {
            let field = backend_field(name, "key");
            assert!(field.ends_with(".conf.key"), "{field}");
            assert_eq!(backend_of_field(&field).as_deref(), Some(name), "{field}");
        }
        assert_eq!(backend_of_field("networking.tls.caCert"), None);
    }
}
