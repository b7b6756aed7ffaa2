//! Resources as users keep them in files: Kuma's Universal YAML or JSON (`type: Secret`,
//! `type: GlobalSecret`, `type: Mesh`, `type: ExternalService`) and Kubernetes manifests (a `v1` `Secret` of type
//! `system.kuma.io/secret` or `system.kuma.io/global-secret`, a `v1` `List` of objects as
//! `kubectl get secrets -o yaml` prints it, a `kuma.io/v1alpha1` `Mesh` or `ExternalService`).
//!
//! `apply`, `import` and `export` read and write these. Reading validates on the client
//! with the same rules and messages as the server, so a bad file is reported in full
//! before anything is written. The Kubernetes mapping is Kuma's (reference §8): the Kuma
//! name is the Kubernetes name, the mesh is the `kuma.io/mesh` label (default `default`),
//! and the bytes are `data.value`.

pub mod template;

use crate::domain::{
    ExternalService, Labels, MESH_LABEL, Mesh, MeshName, NewExternalService, NewMesh, NewSecret,
    Resource, ResourceName, Secret, SecretData, SecretKey, SecretType, ValidationError,
};
use crate::wire::{self, GLOBAL_SECRET_K8S_TYPE, ResourceBody, SECRET_K8S_TYPE};
use serde_json::{Map, Value};

pub use crate::wire::{KUMA_NAMESPACE, to_kubernetes, universal as to_universal};

/// What one document (or one item of a `List`) held.
#[derive(Debug)]
pub enum Entry {
    /// A Kuma resource.
    Resource(Resource),
    /// A Kubernetes object that is not a Kuma resource (say an app's `kubernetes.io/tls`
    /// secret in the same namespace), described for the count of skipped objects.
    Skipped(String),
}

/// Every resource of a YAML stream, and what was skipped.
#[derive(Debug, Default)]
pub struct Stream {
    /// The Kuma resources, in the order given.
    pub resources: Vec<Resource>,
    /// Kubernetes objects that are not Kuma resources.
    pub skipped: Vec<String>,
}

/// Reads a whole YAML (or JSON) stream. Every bad document is reported, by index, in
/// kumactl's words (`resource[1]: failed to parse resource: …`), so a user fixes them all
/// at once; nothing should be written when this fails.
///
/// # Errors
/// One line per bad document.
pub fn read_stream(text: &str) -> Result<Stream, Vec<String>> {
    let mut stream = Stream::default();
    let mut problems = Vec::new();
    for (i, document) in documents(text).into_iter().enumerate() {
        match document.and_then(parse_document) {
            Ok(entries) => {
                for entry in entries {
                    match entry {
                        Entry::Resource(resource) => stream.resources.push(resource),
                        Entry::Skipped(what) => stream.skipped.push(what),
                    }
                }
            }
            Err(why) => problems.push(format!("resource[{i}]: failed to parse resource: {why}")),
        }
    }
    if problems.is_empty() {
        Ok(stream)
    } else {
        Err(problems)
    }
}

/// Splits YAML (or JSON, which is YAML) into its documents at `---` lines, dropping empty
/// ones (blank, or comments only), as `kumactl apply` does, and parses each on its own: a
/// broken document (an unclosed quote, say) is an error at its own index and never
/// swallows the documents after it.
pub fn documents(text: &str) -> Vec<Result<Value, String>> {
    Documents::new(text.as_bytes())
        .filter_map(std::io::Result::ok)
        .collect()
}

/// The documents of a YAML stream as [`documents`] splits them, read line by line from
/// `reader`: memory holds one document at a time, whatever the size of the stream.
pub struct Documents<R> {
    lines: std::io::Lines<R>,
    finished: bool,
}

impl<R: std::io::BufRead> Documents<R> {
    /// Reads `reader`.
    pub fn new(reader: R) -> Self {
        Self {
            lines: reader.lines(),
            finished: false,
        }
    }
}

impl<R: std::io::BufRead> Iterator for Documents<R> {
    /// A document (or why it does not parse), or the read error that ends the stream.
    type Item = std::io::Result<Result<Value, String>>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.finished {
            let mut chunk = String::new();
            loop {
                match self.lines.next() {
                    None => {
                        self.finished = true;
                        break;
                    }
                    Some(Err(e)) => {
                        self.finished = true;
                        return Some(Err(e));
                    }
                    Some(Ok(line)) if is_separator(&line) => break,
                    Some(Ok(line)) => {
                        chunk.push_str(&line);
                        chunk.push('\n');
                    }
                }
            }
            if let Some(document) = parse_chunk(&chunk) {
                return Some(Ok(document));
            }
        }
        None
    }
}

/// A `---` line (optionally followed by blanks and a comment).
fn is_separator(line: &str) -> bool {
    line.strip_prefix("---")
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// One document's text parsed, `None` if it holds nothing (blank, comments, `null`).
fn parse_chunk(chunk: &str) -> Option<Result<Value, String>> {
    let empty = !chunk
        .lines()
        .any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'));
    if empty {
        return None;
    }
    if let Some(why) = too_deep(chunk) {
        return Some(Err(why));
    }
    match serde_yaml_ng::from_str::<Value>(chunk) {
        Ok(Value::Null) => None,
        Ok(value) => Some(Ok(value)),
        Err(e) => Some(Err(e.to_string())),
    }
}

/// How deeply a document may nest (Kuma's resources nest about ten levels). The YAML
/// parser refuses past 128, but only after reading the whole document's events: seconds of
/// CPU for a file of 100,000 `[`. `too_deep` refuses it first, in one pass.
pub const MAX_DEPTH: usize = 100;

/// Why `chunk` nests deeper than [`MAX_DEPTH`], found in one pass before parsing: flow
/// collections (`[`, `{`) outside quotes and comments, and block nesting (indentation
/// levels, plus `- ` markers that open a sequence on the same line). An upper estimate:
/// a block scalar's deeper lines count as a level each time the indentation grows.
fn too_deep(chunk: &str) -> Option<String> {
    let refuse = |line: usize| {
        Some(format!(
            "nested more than {MAX_DEPTH} levels deep at line {}: refused before parsing",
            line + 1
        ))
    };
    let mut flow = 0usize;
    let mut indents: Vec<usize> = Vec::new();
    for (number, line) in chunk.lines().enumerate() {
        let content = line.trim_start_matches(' ');
        if flow == 0 && !content.is_empty() && !content.starts_with('#') {
            let indent = line.len() - content.len();
            while indents.last().is_some_and(|&top| top >= indent) {
                indents.pop();
            }
            indents.push(indent);
            let mut rest = content;
            let mut markers = 0;
            while let Some(after) = rest.strip_prefix("- ").or_else(|| rest.strip_prefix("-\t")) {
                markers += 1;
                rest = after.trim_start_matches([' ', '\t']);
            }
            if indents.len() + markers > MAX_DEPTH {
                return refuse(number);
            }
        }
        let (mut single, mut double, mut escaped) = (false, false, false);
        let mut previous = ' ';
        for c in line.chars() {
            match c {
                _ if escaped => escaped = false,
                '\\' if double => escaped = true,
                '"' if !single => double = !double,
                '\'' if !double => single = !single,
                '#' if !single && !double && previous.is_whitespace() => break,
                '[' | '{' if !single && !double => {
                    flow += 1;
                    if flow + indents.len() > MAX_DEPTH {
                        return refuse(number);
                    }
                }
                ']' | '}' if !single && !double => flow = flow.saturating_sub(1),
                _ => {}
            }
            previous = c;
        }
    }
    None
}

/// Reads one document: a Universal resource, a Kubernetes object, or a `List` of them.
///
/// # Errors
/// Every problem of the document, one per line of the message.
pub fn parse_document(value: Value) -> Result<Vec<Entry>, String> {
    let Value::Object(object) = value else {
        return Err(format!(
            "a resource must be a mapping, not {}",
            kind_of(&value)
        ));
    };
    if object.contains_key("apiVersion") || object.contains_key("kind") {
        parse_kubernetes(object)
    } else {
        parse_universal(object).map(|r| vec![Entry::Resource(r)])
    }
}

/// A Universal resource: `type` `Secret`, `GlobalSecret` or `Mesh` with Kuma's flat fields.
fn parse_universal(object: Map<String, Value>) -> Result<Resource, String> {
    let kind = match object.get("type") {
        Some(Value::String(kind)) => kind.clone(),
        None | Some(Value::Null) => return Err("type: cannot be empty".into()),
        Some(other) => return Err(format!("type: must be a string, not {}", kind_of(other))),
    };
    match kind.as_str() {
        "Secret" | "GlobalSecret" | "Mesh" | "ExternalService" => {}
        other => return Err(format!("invalid resource type {other:?}")),
    }
    let body = wire::parse_value(&kind, Value::Object(object))?;
    if kind == "Mesh" {
        mesh_resource(body).map_err(|e| e.to_string())
    } else if kind == "ExternalService" {
        body.into_new_external_service(|labels, _| Labels::parse(labels))
            .map(Resource::ExternalService)
            .map_err(|e| e.to_string())
    } else {
        secret_resource(&kind, body).map_err(|e| e.to_string())
    }
}

fn secret_resource(kind: &str, body: ResourceBody) -> Result<Resource, ValidationError> {
    let kind = if kind == "Secret" {
        SecretType::Secret
    } else {
        SecretType::GlobalSecret
    };
    body.into_new_secret(kind, |labels, _| Labels::parse(labels))
        .map(Resource::Secret)
}

fn mesh_resource(body: ResourceBody) -> Result<Resource, ValidationError> {
    body.into_new_mesh(MeshName::parse, Labels::parse)
        .map(Resource::Mesh)
}

/// A Kubernetes object: `v1` `Secret`, `v1` `List`, `kuma.io/v1alpha1` `Mesh`.
fn parse_kubernetes(object: Map<String, Value>) -> Result<Vec<Entry>, String> {
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or("");
    let kind = object.get("kind").and_then(Value::as_str).unwrap_or("");
    match (api_version, kind) {
        ("v1", "List") => {
            let Some(Value::Array(items)) = object.get("items") else {
                return Err("items: a List needs an items array".into());
            };
            let mut entries = Vec::new();
            let mut problems = Vec::new();
            for (i, item) in items.iter().enumerate() {
                match parse_document(item.clone()) {
                    Ok(mut found) => entries.append(&mut found),
                    Err(why) => problems.push(format!("items[{i}]: {why}")),
                }
            }
            if problems.is_empty() {
                Ok(entries)
            } else {
                Err(problems.join("; "))
            }
        }
        ("v1", "Secret") => kubernetes_secret(&object),
        ("kuma.io/v1alpha1", "Mesh") => kubernetes_mesh(&object),
        ("kuma.io/v1alpha1", "ExternalService") => kubernetes_external_service(&object),
        (api_version, kind) => Ok(vec![Entry::Skipped(format!(
            "{kind} {:?} ({api_version})",
            metadata_name(&object)
        ))]),
    }
}

fn metadata_name(object: &Map<String, Value>) -> String {
    object
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// `metadata.labels` as a string map.
fn metadata_labels(
    object: &Map<String, Value>,
) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut labels = std::collections::BTreeMap::new();
    match object.get("metadata").and_then(|m| m.get("labels")) {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (k, v) in map {
                let Value::String(v) = v else {
                    return Err(format!("metadata.labels[{k:?}]: must be a string"));
                };
                labels.insert(k.clone(), v.clone());
            }
        }
        Some(other) => {
            return Err(format!(
                "metadata.labels: must be a mapping, not {}",
                kind_of(other)
            ));
        }
    }
    Ok(labels)
}

fn kubernetes_secret(object: &Map<String, Value>) -> Result<Vec<Entry>, String> {
    let k8s_type = object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("Opaque");
    let name = metadata_name(object);
    let global = match k8s_type {
        SECRET_K8S_TYPE => false,
        GLOBAL_SECRET_K8S_TYPE => true,
        other => {
            return Ok(vec![Entry::Skipped(format!(
                "Secret {name:?} of type {other}"
            ))]);
        }
    };
    let mut labels = metadata_labels(object)?;
    let mut errors = ValidationError::default();
    let mesh = if global {
        if labels.contains_key(MESH_LABEL) {
            errors.push(
                format!("metadata.labels[{MESH_LABEL:?}]"),
                "mesh cannot be set on global secret",
            );
        }
        None
    } else {
        let mesh = labels
            .entry(MESH_LABEL.to_owned())
            .or_insert_with(|| "default".to_owned())
            .clone();
        errors.collect(MeshName::parse_field(
            &mesh,
            &format!("metadata.labels[{MESH_LABEL:?}]"),
        ))
    };
    let name = errors.collect(ResourceName::parse_field(&name, "metadata.name"));
    // `data.value` is base64 as in any Kubernetes Secret; `stringData.value` is the
    // plain text form people write by hand (the API server merges it into `data`).
    let value = match (
        object.get("data").and_then(|d| d.get("value")),
        object.get("stringData").and_then(|d| d.get("value")),
    ) {
        (_, Some(Value::String(text))) => Some(text.as_bytes().to_vec()),
        (Some(Value::String(encoded)), None) => match wire::decode_base64(encoded) {
            Ok(bytes) => Some(bytes),
            Err(why) => {
                errors.push("data.value", why);
                None
            }
        },
        _ => None,
    };
    let data = match value {
        Some(bytes) if !bytes.is_empty() => errors.collect(SecretData::new(bytes)),
        _ => {
            errors.push("data.value", "cannot be empty.");
            None
        }
    };
    let labels = errors.collect(Labels::parse(labels));
    match (name, labels, data) {
        (Some(name), Some(labels), Some(data)) if errors.is_empty() => {
            let key = match mesh {
                Some(mesh) => SecretKey::secret(mesh, name),
                None => SecretKey::global(name),
            };
            Ok(vec![Entry::Resource(Resource::Secret(NewSecret {
                key,
                data,
                labels,
            }))])
        }
        _ => Err(errors.to_string()),
    }
}

fn kubernetes_mesh(object: &Map<String, Value>) -> Result<Vec<Entry>, String> {
    let mut errors = ValidationError::default();
    let name = errors.collect(MeshName::parse_field(
        &metadata_name(object),
        "metadata.name",
    ));
    let labels = errors.collect(Labels::parse(metadata_labels(object)?));
    let mut spec = match object.get("spec") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(spec)) => spec.clone(),
        Some(other) => {
            errors.push("spec", format!("must be a mapping, not {}", kind_of(other)));
            Map::new()
        }
    };
    if let Err(e) = crate::domain::mtls::normalize_spec(&mut spec) {
        errors.extend_prefixed("spec.", e);
    }
    match (name, labels) {
        (Some(name), Some(labels)) if errors.is_empty() => {
            Ok(vec![Entry::Resource(Resource::Mesh(NewMesh {
                name,
                spec,
                labels,
            }))])
        }
        _ => Err(errors.to_string()),
    }
}

/// A `kuma.io/v1alpha1` `ExternalService`: cluster-scoped, `mesh` at the top level
/// (`default` when absent, as Kuma's webhook defaults it), the spec under `spec`.
fn kubernetes_external_service(object: &Map<String, Value>) -> Result<Vec<Entry>, String> {
    let mut errors = ValidationError::default();
    let name = errors.collect(ResourceName::parse_field(
        &metadata_name(object),
        "metadata.name",
    ));
    let mesh = match object.get("mesh") {
        None | Some(Value::Null) => Some("default"),
        Some(Value::String(mesh)) => Some(mesh.as_str()),
        Some(other) => {
            errors.push("mesh", format!("must be a string, not {}", kind_of(other)));
            None
        }
    };
    let mesh = mesh.and_then(|m| errors.collect(MeshName::parse_field(m, "mesh")));
    let labels = errors.collect(Labels::parse(metadata_labels(object)?));
    let mut spec = match object.get("spec") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(spec)) => spec.clone(),
        Some(other) => {
            errors.push("spec", format!("must be a mapping, not {}", kind_of(other)));
            Map::new()
        }
    };
    crate::domain::external_service::prune_unknown_fields(&mut spec);
    match (name, mesh, labels) {
        (Some(name), Some(mesh), Some(labels)) if errors.is_empty() => Ok(vec![Entry::Resource(
            Resource::ExternalService(NewExternalService {
                mesh,
                name,
                spec,
                labels,
            }),
        )]),
        _ => Err(errors.to_string()),
    }
}

/// A stored ExternalService as a resource to write elsewhere.
pub fn external_service_resource_of(service: &ExternalService) -> Resource {
    Resource::ExternalService(NewExternalService {
        mesh: service.mesh.clone(),
        name: service.name.clone(),
        spec: service.spec.clone(),
        labels: service.labels.clone(),
    })
}

/// A stored Secret as a resource to write elsewhere.
pub fn secret_resource_of(secret: &Secret) -> Resource {
    Resource::Secret(NewSecret {
        key: secret.key.clone(),
        data: secret.data.clone(),
        labels: secret.labels.clone(),
    })
}

/// A stored Mesh as a resource to write elsewhere.
pub fn mesh_resource_of(mesh: &Mesh) -> Resource {
    Resource::Mesh(NewMesh {
        name: mesh.name.clone(),
        spec: mesh.spec.clone(),
        labels: mesh.labels.clone(),
    })
}

/// Documents as one YAML stream, `---` between them.
///
/// # Panics
/// Never: a `serde_json::Value` always serializes.
pub fn to_yaml_stream<'a>(documents: impl IntoIterator<Item = &'a Value>) -> String {
    let mut out = String::new();
    for (i, document) in documents.into_iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml_ng::to_string(document).expect("JSON values serialize"));
    }
    out
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deep_documents_are_refused_before_parsing_and_real_ones_are_not() {
        let flow = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        let block = format!("{}x", "- ".repeat(100_000));
        let indented: String = (0..MAX_DEPTH + 1)
            .map(|i| format!("{}a:\n", " ".repeat(i)))
            .collect();
        for deep in [flow, block, indented] {
            let why = too_deep(&deep).expect("refused");
            assert!(why.contains("nested more than 100 levels"), "{why}");
        }
        let fine = "type: Mesh\nname: m # [[[[ a comment\nmtls:\n  backends:\n  - name: \"ca-[1\"\n    conf: {cert: {secret: c}, key: {secret: k}}\n";
        assert_eq!(too_deep(fine), None);
        let just = format!("{}{}", "[".repeat(MAX_DEPTH - 1), "]".repeat(MAX_DEPTH - 1));
        assert_eq!(too_deep(&just), None);
    }
    use serde_json::json;

    fn one(text: &str) -> Result<Resource, String> {
        let mut docs = documents(text);
        assert_eq!(docs.len(), 1);
        match parse_document(docs.remove(0)?)?.remove(0) {
            Entry::Resource(r) => Ok(r),
            Entry::Skipped(what) => Err(format!("skipped {what}")),
        }
    }

    #[test]
    fn universal_secret_round_trips() {
        let r =
            one("type: Secret\nmesh: default\nname: s1\nlabels: {a: b}\ndata: aGVsbG8=\n").unwrap();
        let Resource::Secret(s) = &r else { panic!() };
        assert_eq!(s.data.expose(), b"hello");
        assert_eq!(s.key.mesh().unwrap().as_str(), "default");
        let back = to_universal(&r);
        assert_eq!(
            back,
            json!({"type":"Secret","mesh":"default","name":"s1","labels":{"a":"b"},"data":"aGVsbG8="})
        );
    }

    #[test]
    fn every_problem_of_a_document_is_reported() {
        let err = one("type: Secret\nname: Bad_Name\ndata: \"\"\n").unwrap_err();
        assert!(err.contains("name:"), "{err}");
        assert!(err.contains("mesh: cannot be empty"), "{err}");
        assert!(err.contains("data: cannot be empty"), "{err}");
    }

    #[test]
    fn kubernetes_secret_maps_as_kuma_does() {
        let r = one(
            "apiVersion: v1\nkind: Secret\ntype: system.kuma.io/secret\nmetadata:\n  name: s1\n  namespace: kuma-system\ndata:\n  value: aGVsbG8=\n",
        )
        .unwrap();
        let Resource::Secret(s) = r else { panic!() };
        assert_eq!(
            s.key.mesh().unwrap().as_str(),
            "default",
            "mesh defaults to default"
        );
        assert_eq!(s.labels.get(MESH_LABEL), Some("default"));
        let global = one(
            "apiVersion: v1\nkind: Secret\ntype: system.kuma.io/global-secret\nmetadata: {name: g, labels: {kuma.io/mesh: x}}\ndata: {value: aGVsbG8=}\n",
        )
        .unwrap_err();
        assert!(
            global.contains("mesh cannot be set on global secret"),
            "{global}"
        );
    }

    #[test]
    fn lists_skip_secrets_that_are_not_kumas() {
        let docs = documents(
            "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Secret\n  type: kubernetes.io/tls\n  metadata: {name: app-tls}\n  data: {tls.crt: eA==}\n- apiVersion: v1\n  kind: Secret\n  type: system.kuma.io/global-secret\n  metadata: {name: g}\n  data: {value: eA==}\n",
        );
        let entries = parse_document(docs.into_iter().next().unwrap().unwrap()).unwrap();
        assert!(matches!(&entries[0], Entry::Skipped(what) if what.contains("app-tls")));
        assert!(
            matches!(&entries[1], Entry::Resource(Resource::Secret(s)) if s.key.mesh().is_none())
        );
    }

    #[test]
    fn a_syntax_error_stays_in_its_document() {
        let docs =
            documents("type: Mesh\nname: a\n---\nname: \"unclosed\n---\ntype: Mesh\nname: b\n");
        assert_eq!(docs.len(), 3);
        assert!(docs[0].is_ok() && docs[1].is_err() && docs[2].is_ok());
        let problems = read_stream("type: Mesh\nname: a\n---\nname: [unclosed\n").unwrap_err();
        assert_eq!(problems.len(), 1);
        assert!(problems[0].starts_with("resource[1]: failed to parse resource:"));
    }
}
