//! The `ExternalService` resource, as Kuma v2.14 has it: a service outside the mesh
//! (`networking.address`), the tags it is known by (`kuma.io/service` above all), and the
//! TLS a sidecar reaches it with (`networking.tls`), whose CA certificate, client
//! certificate and client key may come from Secrets of the same Mesh.
//!
//! The spec is kept as the JSON object the user gave (Kuma's wire form): this module reads
//! it to check it with Kuma's validator messages, and to name the Secrets it uses (the
//! references the store records and the delete guard reads). Checks that need a Secret's
//! data (does it exist, does the PEM parse, does the key match) live in the store and in
//! `crate::ca`.

use super::mtls::DataSource;
use super::{Labels, MeshName, Meta, ResourceKey, ResourceName, ValidationError};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde_json::Value;
use std::net::IpAddr;

/// The resource type, as Kuma names it.
pub const EXTERNAL_SERVICE: &str = "ExternalService";
/// The tag every ExternalService must carry.
pub const SERVICE_TAG: &str = "kuma.io/service";
/// The tag naming the protocol.
pub const PROTOCOL_TAG: &str = "kuma.io/protocol";

/// An ExternalService's spec fields (`networking`, `tags`): everything but `type`, `mesh`,
/// `name`, labels and timestamps.
pub type ExternalServiceSpec = serde_json::Map<String, Value>;

/// An ExternalService to write.
#[derive(Debug, Clone)]
pub struct NewExternalService {
    /// Its Mesh.
    pub mesh: MeshName,
    /// Its name, unique in the Mesh.
    pub name: ResourceName,
    /// Its spec fields.
    pub spec: ExternalServiceSpec,
    /// Its labels.
    pub labels: Labels,
}

impl NewExternalService {
    /// Its identity, as Kuma prints it.
    pub fn key(&self) -> ResourceKey {
        external_service_key(&self.mesh, &self.name)
    }
}

/// A stored ExternalService.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalService {
    /// Its Mesh.
    pub mesh: MeshName,
    /// Its name.
    pub name: ResourceName,
    /// Its spec fields.
    pub spec: ExternalServiceSpec,
    /// Its labels.
    pub labels: Labels,
    /// Version and timestamps.
    pub meta: Meta,
}

impl ExternalService {
    /// Its identity, as Kuma prints it.
    pub fn key(&self) -> ResourceKey {
        external_service_key(&self.mesh, &self.name)
    }
}

/// `networking.address` of a spec, as given (kumactl's ADDRESS column).
pub fn address(spec: &ExternalServiceSpec) -> &str {
    spec.get("networking")
        .and_then(|n| n.get("address"))
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// The tags of a spec, `key=value` sorted and joined by a space (kumactl's TAGS column).
pub fn tags_line(spec: &ExternalServiceSpec) -> String {
    let mut tags: Vec<String> = spec
        .get("tags")
        .and_then(Value::as_object)
        .map(|tags| {
            tags.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    tags.sort();
    tags.join(" ")
}

/// The key of ExternalService `name` in `mesh`.
pub fn external_service_key(mesh: &MeshName, name: &ResourceName) -> ResourceKey {
    ResourceKey {
        resource_type: EXTERNAL_SERVICE,
        mesh: Some(mesh.as_str().to_owned()),
        name: name.as_str().to_owned(),
    }
}

/// The three data sources of `networking.tls`, in Kuma's field order: (field, JSON key).
pub const TLS_SOURCES: [(&str, &str); 3] = [
    ("networking.tls.caCert", "caCert"),
    ("networking.tls.clientCert", "clientCert"),
    ("networking.tls.clientKey", "clientKey"),
];

/// The `networking.tls` of a spec that passed [`check_spec`]: where each of its three
/// data sources comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExternalServiceTls {
    /// `caCert`.
    pub ca_cert: Option<DataSource>,
    /// `clientCert`.
    pub client_cert: Option<DataSource>,
    /// `clientKey`.
    pub client_key: Option<DataSource>,
}

impl ExternalServiceTls {
    /// Each source given, with its field path (`networking.tls.caCert`, ...).
    pub fn sources(&self) -> impl Iterator<Item = (&'static str, &DataSource)> {
        [&self.ca_cert, &self.client_cert, &self.client_key]
            .into_iter()
            .zip(TLS_SOURCES)
            .filter_map(|(source, (field, _))| source.as_ref().map(|s| (field, s)))
    }

    /// The Secrets it names: (field, secret name), in field order.
    pub fn secret_references(&self) -> Vec<(&'static str, String)> {
        self.sources()
            .filter_map(|(field, source)| match source {
                DataSource::Secret(name) => Some((field, name.clone())),
                _ => None,
            })
            .collect()
    }
}

/// Checks a spec with Kuma's ExternalService validator (its messages, in its order), then
/// this store's own rules (a data source is one of `secret`, `inline`, `inlineString`;
/// `clientCert` and `clientKey` come together), and returns its TLS sources.
///
/// # Errors
/// Every violation.
pub fn check_spec(spec: &ExternalServiceSpec) -> Result<ExternalServiceTls, ValidationError> {
    let mut errors = ValidationError::default();
    let networking = match spec.get("networking") {
        None | Some(Value::Null) => {
            errors.push("networking", "should have networking");
            None
        }
        Some(Value::Object(networking)) => Some(networking),
        Some(_) => {
            errors.push("networking", "must be an object");
            None
        }
    };
    let address = networking
        .and_then(|n| n.get("address"))
        .filter(|a| !a.is_null());
    let address = match address {
        None => Some(""),
        Some(Value::String(address)) => Some(address.as_str()),
        Some(_) => {
            errors.push("networking.address", "must be a string");
            None
        }
    };
    if let (Some(_), Some(address)) = (networking, address) {
        check_address(address, &mut errors);
    }
    if let Some(flag) = networking.and_then(|n| n.get("disableHostDNSEntry")) {
        expect_bool(flag, "networking.disableHostDNSEntry", &mut errors);
    }
    let tls = networking
        .and_then(|n| n.get("tls"))
        .filter(|t| !t.is_null());
    let mut parsed = ExternalServiceTls::default();
    match tls {
        None => {}
        Some(Value::Object(tls)) => parsed = check_tls(tls, &mut errors),
        Some(_) => errors.push("networking.tls", "must be an object"),
    }
    let tags = match spec.get("tags") {
        None | Some(Value::Null) => Some(serde_json::Map::new()),
        Some(Value::Object(tags)) => Some(tags.clone()),
        Some(_) => {
            errors.push("tags", "must be an object");
            None
        }
    };
    if let Some(tags) = tags {
        check_tags(&tags, address.unwrap_or(""), &mut errors);
    }
    errors.into_result(|| parsed)
}

/// The fields of Kuma's ExternalService message, by level: what a body keeps (Kuma's
/// decoder drops unknown fields, and so does this store rather than keep them unread).
const SPEC_FIELDS: [&str; 2] = ["networking", "tags"];
const NETWORKING_FIELDS: [&str; 3] = ["address", "tls", "disableHostDNSEntry"];
const TLS_FIELDS: [&str; 7] = [
    "enabled",
    "caCert",
    "clientCert",
    "clientKey",
    "allowRenegotiation",
    "serverName",
    "skipHostnameVerification",
];
const SOURCE_FIELDS: [&str; 4] = ["secret", "file", "inline", "inlineString"];

/// Drops the fields Kuma's ExternalService does not have, at every level, and null ones,
/// as Kuma's decoder does: what is stored is what Kuma would store.
pub fn prune_unknown_fields(spec: &mut ExternalServiceSpec) {
    fn keep(object: &mut serde_json::Map<String, Value>, known: &[&str]) {
        object.retain(|k, v| known.contains(&k.as_str()) && !v.is_null());
    }
    keep(spec, &SPEC_FIELDS);
    let Some(Value::Object(networking)) = spec.get_mut("networking") else {
        return;
    };
    keep(networking, &NETWORKING_FIELDS);
    let Some(Value::Object(tls)) = networking.get_mut("tls") else {
        return;
    };
    keep(tls, &TLS_FIELDS);
    for (_, key) in TLS_SOURCES {
        if let Some(Value::Object(source)) = tls.get_mut(key) {
            keep(source, &SOURCE_FIELDS);
        }
    }
}

fn expect_bool(value: &Value, field: &str, errors: &mut ValidationError) {
    if !matches!(value, Value::Bool(_) | Value::Null) {
        errors.push(field, "must be a boolean");
    }
}

/// Kuma's `validateExternalServiceAddress`: all four messages for an address that does not
/// split, as Kuma gives them.
fn check_address(address: &str, errors: &mut ValidationError) {
    const FIELD: &str = "networking.address";
    if address.is_empty() {
        errors.push(FIELD, "address can't be empty");
        return;
    }
    let (host, port) = match split_host_port(address) {
        Some(parts) => parts,
        None => {
            errors.push(FIELD, "unable to parse address");
            ("", "")
        }
    };
    if host.parse::<IpAddr>().is_err() && !is_dns_name(host) {
        errors.push(
            FIELD,
            "address has to be a valid IP address or a domain name",
        );
    }
    // Go's ParseUint(port, 10, 32): digits only, at most u32::MAX; an error gives 0 (or
    // the maximum on overflow), which the range check then refuses too.
    let parsed = if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) {
        port.parse::<u32>().ok()
    } else {
        None
    };
    if parsed.is_none() {
        errors.push(FIELD, "unable to parse port in address");
    }
    if !matches!(parsed, Some(1..=65535)) {
        errors.push(FIELD, "port must be in the range [1, 65535]");
    }
}

/// Go's `net.SplitHostPort`: `host:port`, or `[host]:port` for an IPv6 host; `None` where
/// Go returns an error (no port, too many colons, stray brackets).
fn split_host_port(address: &str) -> Option<(&str, &str)> {
    if let Some(rest) = address.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        let port = after.strip_prefix(':')?;
        if host.contains('[') || host.contains(']') || port.contains(['[', ']']) {
            return None;
        }
        return Some((host, port));
    }
    let (host, port) = address.rsplit_once(':')?;
    if host.contains(':') || host.contains(['[', ']']) || port.contains(['[', ']']) {
        return None;
    }
    Some((host, port))
}

/// govalidator's `IsDNSName`: labels of letters, digits, `_` and `-` (not leading `-`),
/// at most 63 each, an optional trailing dot; not an IP address.
fn is_dns_name(host: &str) -> bool {
    if host.is_empty() || host.replace('.', "").len() > 255 {
        return false;
    }
    let trimmed = host
        .strip_suffix('.')
        .or_else(|| host.strip_suffix('_'))
        .unwrap_or(host);
    !trimmed.is_empty()
        && trimmed.split('.').all(|label| {
            let bytes = label.as_bytes();
            !bytes.is_empty()
                && bytes.len() <= 63
                && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
                && bytes
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
        })
}

fn check_tls(
    tls: &serde_json::Map<String, Value>,
    errors: &mut ValidationError,
) -> ExternalServiceTls {
    for (key, value) in tls {
        match key.as_str() {
            "enabled" | "allowRenegotiation" | "skipHostnameVerification" => {
                expect_bool(value, &format!("networking.tls.{key}"), errors);
            }
            "serverName" => match value {
                Value::Null => {}
                Value::String(name) if name.is_empty() => {
                    errors.push("networking.tls.serverName", "cannot be empty");
                }
                Value::String(_) => {}
                _ => errors.push("networking.tls.serverName", "must be a string"),
            },
            _ => {}
        }
    }
    let mut sources = [None, None, None];
    for ((field, key), slot) in TLS_SOURCES.into_iter().zip(sources.iter_mut()) {
        if let Some(value) = tls.get(key).filter(|v| !v.is_null()) {
            *slot = parse_source(value, field, errors);
        }
    }
    let [ca_cert, client_cert, client_key] = sources;
    let parsed = ExternalServiceTls {
        ca_cert,
        client_cert,
        client_key,
    };
    let (cert, key) = (tls.get("clientCert"), tls.get("clientKey"));
    let given = |v: Option<&Value>| v.is_some_and(|v| !v.is_null());
    if given(cert) && !given(key) {
        errors.push(
            "networking.tls.clientKey",
            "must be given with clientCert: a client certificate is presented with its key",
        );
    }
    if given(key) && !given(cert) {
        errors.push(
            "networking.tls.clientCert",
            "must be given with clientKey: a client key is presented with its certificate",
        );
    }
    parsed
}

/// One data source: Kuma's `data source cannot be empty` for one with no value, and the
/// `oneof` rule; `file` is refused (a path on a control plane this store is not).
fn parse_source(value: &Value, field: &str, errors: &mut ValidationError) -> Option<DataSource> {
    let Value::Object(source) = value else {
        errors.push(field, "must be an object");
        return None;
    };
    let given: Vec<&str> = SOURCE_FIELDS
        .into_iter()
        .filter(|f| source.get(*f).is_some_and(|v| !v.is_null()))
        .collect();
    if let [_, second, ..] = given[..] {
        errors.push(
            field,
            format!("error parsing {second:?}, oneof kuma.system.v1alpha1.DataSource.type is already set"),
        );
        return None;
    }
    let text = |key: &str| source.get(key).and_then(Value::as_str).unwrap_or("");
    let Some(&chosen) = given.first() else {
        errors.push(field, "data source cannot be empty");
        return None;
    };
    if !source[chosen].is_string() {
        errors.push(format!("{field}.{chosen}"), "must be a string");
        return None;
    }
    let value = text(chosen);
    if value.is_empty() {
        errors.push(field, "data source cannot be empty");
        return None;
    }
    match chosen {
        "secret" => Some(DataSource::Secret(value.to_owned())),
        "inline" => match STANDARD.decode(value) {
            Ok(bytes) => Some(DataSource::Inline(bytes)),
            Err(_) => {
                errors.push(format!("{field}.inline"), "must be base64");
                None
            }
        },
        "inlineString" => Some(DataSource::Inline(value.as_bytes().to_vec())),
        _ => {
            errors.push(
                format!("{field}.file"),
                "file data sources are not read by kuma-secrets: use secret, inline or inlineString",
            );
            None
        }
    }
}

/// Kuma's `ValidateTags` with `RequireService`, plus its protocol check and the
/// service-is-not-the-address rule, in Kuma's order.
fn check_tags(tags: &serde_json::Map<String, Value>, address: &str, errors: &mut ValidationError) {
    let text = |v: &Value| v.as_str().unwrap_or("").to_owned();
    if let Some(protocol) = tags.get(PROTOCOL_TAG) {
        let value = text(protocol);
        let known = ["grpc", "http", "http2", "kafka", "tcp", "tls"];
        if !known.contains(&value.to_ascii_lowercase().as_str()) {
            errors.push(
                format!("tags[{PROTOCOL_TAG:?}]"),
                format!(
                    "tag {PROTOCOL_TAG:?} has an invalid value {value:?}. Allowed values: grpc, http, http2, kafka, tcp"
                ),
            );
        }
    }
    let mut keys: Vec<&String> = tags.keys().collect();
    keys.sort();
    for key in keys {
        let field = format!("tags[{key:?}]");
        if key.is_empty() {
            errors.push("tags", "tag name must be non-empty");
        }
        if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:/".contains(&b))
        {
            errors.push(
                &field,
                "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
            );
        }
        let value = &tags[key];
        if !matches!(value, Value::String(_) | Value::Null) {
            errors.push(&field, "must be a string");
            continue;
        }
        let value = text(value);
        if value.is_empty() {
            errors.push(&field, "tag value must be non-empty");
        }
        if !value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:".contains(&b))
        {
            errors.push(
                &field,
                "tag value must consist of alphanumeric characters, dots, dashes and underscores",
            );
        }
    }
    match tags.get(SERVICE_TAG).map(text) {
        None => errors.push("tags", format!("mandatory tag {SERVICE_TAG:?} is missing")),
        Some(service) => {
            if !service.is_empty()
                && split_host_port(address).is_some_and(|(host, _)| host == service)
            {
                errors.push(
                    format!("tags[{SERVICE_TAG:?}]"),
                    "cannot be the same as networking.address",
                );
            }
        }
    }
}

/// Hides an inline client key (`networking.tls.clientKey` given as `inline` or
/// `inlineString`) from a spec about to be shown to a caller who is not an admin, as a
/// Mesh's inline CA keys are hidden. A key kept in a Secret is only a name and stays.
pub fn redact_private_key(spec: &mut ExternalServiceSpec) {
    let key = spec
        .get_mut("networking")
        .and_then(|n| n.get_mut("tls"))
        .and_then(|t| t.get_mut("clientKey"))
        .and_then(Value::as_object_mut);
    if let Some(key) = key
        && (key.contains_key("inline") || key.contains_key("inlineString"))
    {
        key.clear();
        key.insert(
            "redacted".into(),
            Value::String(super::mtls::REDACTED_KEY.into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn violations(spec: Value) -> Vec<(String, String)> {
        let spec = spec.as_object().unwrap().clone();
        match check_spec(&spec) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .violations
                .into_iter()
                .map(|v| (v.field, v.reason))
                .collect(),
        }
    }

    fn pairs(expected: &[(&str, &str)]) -> Vec<(String, String)> {
        expected
            .iter()
            .map(|(f, m)| ((*f).to_owned(), (*m).to_owned()))
            .collect()
    }

    #[test]
    fn kumas_valid_cases_pass() {
        for address in [
            "192.168.0.1:8080",
            "example.com:8080",
            "[fd00:a123::1]:8080",
        ] {
            let spec = json!({"networking": {"address": address},
                "tags": {"kuma.io/service": "backend", "version": "1",
                         "kuma.io/valid": "abc.0123-789.under_score:90"}});
            assert_eq!(violations(spec), Vec::new(), "{address}");
        }
    }

    #[test]
    fn kumas_invalid_cases_give_kumas_violations() {
        let four = [
            ("networking.address", "unable to parse address"),
            (
                "networking.address",
                "address has to be a valid IP address or a domain name",
            ),
            ("networking.address", "unable to parse port in address"),
            ("networking.address", "port must be in the range [1, 65535]"),
        ];
        let service = json!({"kuma.io/service": "backend"});
        let cases: Vec<(Value, Vec<(String, String)>)> = vec![
            (
                json!({"tags": {"kuma.io/service": "backend", "version": "1"}}),
                pairs(&[("networking", "should have networking")]),
            ),
            (
                json!({"networking": {"address": null}, "tags": service}),
                pairs(&[("networking.address", "address can't be empty")]),
            ),
            (
                json!({"networking": {"address": "..>_<..:8080"}, "tags": service}),
                pairs(&[(
                    "networking.address",
                    "address has to be a valid IP address or a domain name",
                )]),
            ),
            (
                json!({"networking": {"address": "http://example.com:8080"}, "tags": service}),
                pairs(&four),
            ),
            (
                json!({"networking": {"address": "fd00:1234::1:8080"}, "tags": service}),
                pairs(&four),
            ),
            (
                json!({"networking": {"address": "192.168.0.1:65536"}, "tags": service}),
                pairs(&[("networking.address", "port must be in the range [1, 65535]")]),
            ),
            (
                json!({"networking": {"address": "192.168.0.1:8080", "tls": {"serverName": ""}},
                       "tags": service}),
                pairs(&[("networking.tls.serverName", "cannot be empty")]),
            ),
            (
                json!({"networking": {"address": "192.168.0.1:8080"}, "tags": {"version": "1"}}),
                pairs(&[("tags", "mandatory tag \"kuma.io/service\" is missing")]),
            ),
            (
                json!({"networking": {"address": "192.168.0.1:8080"},
                       "tags": {"kuma.io/service": "backend", "version": null}}),
                pairs(&[("tags[\"version\"]", "tag value must be non-empty")]),
            ),
            (
                json!({"networking": {"address": "192.168.0.1:8080"},
                       "tags": {"kuma.io/service": "backend", "kuma.io/protocol": null}}),
                pairs(&[
                    (
                        "tags[\"kuma.io/protocol\"]",
                        "tag \"kuma.io/protocol\" has an invalid value \"\". Allowed values: grpc, http, http2, kafka, tcp",
                    ),
                    ("tags[\"kuma.io/protocol\"]", "tag value must be non-empty"),
                ]),
            ),
            (
                json!({"networking": {"address": "192.168.0.1:8080"},
                       "tags": {"kuma.io/service": "backend", "inv@lidT/gN%me": "value"}}),
                pairs(&[(
                    "tags[\"inv@lidT/gN%me\"]",
                    "tag name must consist of alphanumeric characters, dots, dashes, slashes and underscores",
                )]),
            ),
            (
                json!({"networking": {"address": "192.168.0.1:8080"},
                       "tags": {"kuma.io/service": "backend", "invalidTagValue": "inv@lid+t@g"}}),
                pairs(&[(
                    "tags[\"invalidTagValue\"]",
                    "tag value must consist of alphanumeric characters, dots, dashes and underscores",
                )]),
            ),
            (
                json!({"networking": {"address": "192.168.0.1:8080", "tls": {"enabled": true,
                       "caCert": {"inline": ""}, "clientCert": {"inlineString": ""},
                       "clientKey": {"secret": ""}}}, "tags": service}),
                pairs(&[
                    ("networking.tls.caCert", "data source cannot be empty"),
                    ("networking.tls.clientCert", "data source cannot be empty"),
                    ("networking.tls.clientKey", "data source cannot be empty"),
                ]),
            ),
            (
                json!({"networking": {"address": "example.com:443"},
                       "tags": {"kuma.io/service": "example.com"}}),
                pairs(&[(
                    "tags[\"kuma.io/service\"]",
                    "cannot be the same as networking.address",
                )]),
            ),
        ];
        for (spec, expected) in cases {
            assert_eq!(violations(spec.clone()), expected, "{spec}");
        }
    }

    #[test]
    fn a_client_certificate_comes_with_its_key_and_sources_are_one_of() {
        let got = violations(json!({"networking": {"address": "a.b:443", "tls": {
            "clientCert": {"secret": "c"},
            "caCert": {"secret": "ca", "inlineString": "x"}}},
            "tags": {"kuma.io/service": "s"}}));
        assert_eq!(
            got.iter().map(|(f, _)| f.as_str()).collect::<Vec<_>>(),
            ["networking.tls.caCert", "networking.tls.clientKey"]
        );
        // A path on a control plane this store is not: refused, naming the field.
        let got = violations(json!({"networking": {"address": "a.b:443", "tls": {
            "caCert": {"file": "/etc/ca.pem"}}}, "tags": {"kuma.io/service": "s"}}));
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0].0, "networking.tls.caCert.file");
        assert!(
            got[0].1.starts_with("file data sources are not read"),
            "{got:?}"
        );
        let tls = check_spec(
            json!({"networking": {"address": "a.b:443", "tls": {
                "caCert": {"secret": "ca"}, "clientCert": {"secret": "c"},
                "clientKey": {"inlineString": "k"}}}, "tags": {"kuma.io/service": "s"}})
            .as_object()
            .unwrap(),
        )
        .unwrap();
        assert_eq!(
            tls.secret_references(),
            [
                ("networking.tls.caCert", "ca".to_owned()),
                ("networking.tls.clientCert", "c".to_owned())
            ]
        );
    }
}
