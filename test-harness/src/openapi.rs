//! Manifests checked against Istio's CRD schemas, as the API server would check them on `kubectl apply`.
//!
//! Kubernetes CRDs carry OpenAPI v3 *structural* schemas. This is a small validator for the subset they use:
//! `type`, `properties`, `required`, `additionalProperties`, `x-kubernetes-preserve-unknown-fields`, `items`,
//! `enum`, `minLength`/`maxLength`, `minimum`/`maximum`, `minItems`/`maxItems`, `minProperties`/`maxProperties`,
//! `nullable`, `x-kubernetes-int-or-string`, `x-kubernetes-list-type` (`map` and `set` uniqueness) and the
//! combinators `allOf`/`anyOf`/`oneOf`/`not`. `format` is ignored; `pattern` and CEL rules
//! (`x-kubernetes-validations`) are listed as not evaluated, except the "at most N of these fields" rules Istio
//! writes as `(has(self.a) ? 1 : 0) + (has(self.b) ? 1 : 0) <= 1` (e.g. WasmPlugin's "only one of targetRefs or
//! selector can be set"), which are recognised and checked.
//!
//! One deliberate difference from the API server: a field the schema does not know is an error here. Kubernetes
//! silently prunes it, which for a manifest in a repository means a setting that never takes effect.

use crate::pki::Error;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::{env, fs};

/// Where the Istio CRDs are looked for when `ISTIO_CRDS` is not set, relative to the workspace root.
pub const DEFAULT_CRDS: &str = "../shared/reference/istio-crds.gen.yaml";

/// The OpenAPI schemas of a set of CRDs, by (group, version, kind).
#[derive(Debug, Default)]
pub struct CrdSchemas {
    schemas: BTreeMap<(String, String, String), Value>,
}

/// What validating one document found.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    /// Violations, each starting with the path of the offending value (`spec.failStrategy: …`).
    pub errors: Vec<String>,
    /// Checks the schema asks for that this validator does not perform (CEL rules, regular expressions), with the
    /// path they apply to. Not errors: the API server may still reject what passes here.
    pub not_evaluated: Vec<String>,
}

impl CrdSchemas {
    /// Reads every `CustomResourceDefinition` in a (multi-document) YAML file. Documents of other kinds are
    /// ignored; a file without any CRD is an error, since it is surely not the file that was meant.
    pub fn load(path: &Path) -> Result<CrdSchemas, Error> {
        let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        CrdSchemas::parse(&text).map_err(|e| format!("{}: {e}", path.display()).into())
    }

    /// [`CrdSchemas::load`] on YAML text.
    pub fn parse(text: &str) -> Result<CrdSchemas, Error> {
        let mut schemas = BTreeMap::new();
        for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
            let document = Value::deserialize(document).map_err(|e| format!("document {index}: {e}"))?;
            if document.get("kind").and_then(Value::as_str) != Some("CustomResourceDefinition") {
                continue;
            }
            let name = document.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("(unnamed)");
            let text_at = |pointer: &str| {
                document
                    .pointer(pointer)
                    .and_then(Value::as_str)
                    .ok_or_else(|| format!("CustomResourceDefinition {name}: {pointer} is missing"))
            };
            let group = text_at("/spec/group")?;
            let kind = text_at("/spec/names/kind")?;
            let versions = document.pointer("/spec/versions").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
            for version in versions {
                let version_name = version.get("name").and_then(Value::as_str).unwrap_or_default();
                let schema = version.pointer("/schema/openAPIV3Schema").ok_or_else(|| {
                    format!("CustomResourceDefinition {name}: version {version_name} has no openAPIV3Schema")
                })?;
                let key = (group.to_string(), version_name.to_string(), kind.to_string());
                schemas.insert(key, with_object_meta(schema));
            }
        }
        if schemas.is_empty() {
            return Err("no CustomResourceDefinition with a schema in it".into());
        }
        Ok(CrdSchemas { schemas })
    }

    /// The Istio CRDs: the file `$ISTIO_CRDS` names, else [`DEFAULT_CRDS`] next to the workspace when it exists.
    /// `Ok(None)` when neither is there; an `ISTIO_CRDS` that cannot be read is an error, not a skip.
    pub fn find() -> Result<Option<(PathBuf, CrdSchemas)>, Error> {
        let path = match env::var_os("ISTIO_CRDS").filter(|value| !value.is_empty()) {
            Some(path) => PathBuf::from(path),
            None => {
                let path = crate::envoy::workspace_root().join(DEFAULT_CRDS);
                if !path.is_file() {
                    return Ok(None);
                }
                path
            }
        };
        let schemas = CrdSchemas::load(&path)?;
        Ok(Some((path, schemas)))
    }

    /// How many (group, version, kind) schemas were loaded.
    pub fn len(&self) -> usize {
        self.schemas.len()
    }

    pub fn is_empty(&self) -> bool {
        self.schemas.is_empty()
    }

    /// The errors in `document` (a parsed manifest with `apiVersion: group/version` and `kind`); empty when it
    /// is valid. `Err` when there is no schema for its apiVersion and kind.
    pub fn validate(&self, document: &Value) -> Result<Vec<String>, String> {
        self.check(document).map(|report| report.errors)
    }

    /// [`CrdSchemas::validate`], also listing what was not evaluated.
    pub fn check(&self, document: &Value) -> Result<Report, String> {
        let api_version = document.get("apiVersion").and_then(Value::as_str).ok_or("apiVersion is missing")?;
        let kind = document.get("kind").and_then(Value::as_str).ok_or("kind is missing")?;
        // The core group has no name: `apiVersion: v1`.
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        let schema = self
            .schemas
            .get(&(group.to_string(), version.to_string(), kind.to_string()))
            .ok_or_else(|| format!("no schema for apiVersion {api_version} kind {kind}"))?;
        let mut report = Report::default();
        check(schema, document, "", &mut report, Mode::Document);
        Ok(report)
    }
}

/// The root schema of a CRD with `apiVersion`, `kind` and `metadata`, which the API server validates itself and
/// CRDs leave out. `metadata` is ObjectMeta, abridged: the fields people write checked, the server-written ones
/// accepted.
fn with_object_meta(schema: &Value) -> Value {
    let mut schema = schema.clone();
    let string = json!({"type": "string"});
    let opaque_list =
        json!({"type": "array", "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}});
    let metadata = json!({
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 253},
            "generateName": string,
            "namespace": {"type": "string", "maxLength": 63},
            // Label and annotation values are strings: `inject: true` unquoted is a classic rejected manifest.
            "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}},
            "annotations": {"type": "object", "additionalProperties": string},
            "finalizers": {"type": "array", "items": string},
            "ownerReferences": opaque_list,
            "managedFields": opaque_list,
            "uid": string,
            "resourceVersion": string,
            "generation": {"type": "integer"},
            "creationTimestamp": {"type": "string", "nullable": true},
            "deletionTimestamp": {"type": "string", "nullable": true},
            "deletionGracePeriodSeconds": {"type": "integer"},
        },
    });
    if let Some(root) = schema.as_object_mut() {
        let properties = root.entry("properties").or_insert_with(|| Value::Object(Map::new()));
        if let Some(properties) = properties.as_object_mut() {
            properties.insert("apiVersion".into(), string.clone());
            properties.insert("kind".into(), string);
            properties.insert("metadata".into(), metadata);
        }
    }
    schema
}

/// Where a schema is being applied. Inside `allOf`/`anyOf`/`oneOf`/`not` a schema only constrains values: the
/// structure (which fields exist) is the enclosing schema's business, and notes would repeat.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    Document,
    Branch,
}

/// The path of a child field: `spec` + `url` → `spec.url`; keys that are not plain names are quoted
/// (`metadata.labels["app.kubernetes.io/name"]`).
fn field_path(path: &str, key: &str) -> String {
    let plain = !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::from(key)),
    }
}

fn shown(path: &str) -> &str {
    if path.is_empty() {
        "(document)"
    } else {
        path
    }
}

/// A value, briefly, for error messages.
fn describe_value(value: &Value) -> String {
    match value {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("boolean {b}"),
        Value::Number(n) => format!("number {n}"),
        Value::String(s) if s.chars().count() > 40 => format!("string {:?}…", s.chars().take(40).collect::<String>()),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(items) => format!("an array of {}", items.len()),
        Value::Object(_) => "an object".into(),
    }
}

fn is_integer(value: &Value) -> bool {
    match value {
        Value::Number(n) => n.is_i64() || n.is_u64() || n.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

fn has_type(value: &Value, type_name: &str) -> bool {
    match type_name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => is_integer(value),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        // An unknown type name is the schema's problem, not the document's.
        _ => true,
    }
}

fn check(schema: &Value, value: &Value, path: &str, report: &mut Report, mode: Mode) {
    let Some(schema) = schema.as_object() else { return };
    let flag = |name: &str| schema.get(name).and_then(Value::as_bool).unwrap_or(false);

    if value.is_null() {
        if !flag("nullable") && mode == Mode::Document {
            // Kubernetes drops a null it may not store; in a manifest that is a setting that silently vanishes.
            report.errors.push(format!("{}: null is not allowed here (the field is not nullable)", shown(path)));
        }
        return;
    }
    if flag("x-kubernetes-int-or-string") {
        if !is_integer(value) && !value.is_string() {
            report.errors.push(format!(
                "{}: expected an integer or a string, found {}",
                shown(path),
                describe_value(value)
            ));
            return;
        }
    } else if let Some(type_name) = schema.get("type").and_then(Value::as_str) {
        if !has_type(value, type_name) {
            report.errors.push(format!("{}: expected {type_name}, found {}", shown(path), describe_value(value)));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(value) {
            let listed: Vec<String> =
                allowed.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).collect();
            report.errors.push(format!(
                "{}: {} is not one of {}",
                shown(path),
                describe_value(value),
                listed.join(", ")
            ));
        }
    }
    match value {
        Value::String(text) => check_string(schema, text, path, report, mode),
        Value::Number(number) => check_number(schema, number.as_f64().unwrap_or(0.0), path, report),
        Value::Array(items) => check_array(schema, items, path, report, mode),
        Value::Object(fields) => check_object(schema, fields, path, report, mode),
        Value::Bool(_) | Value::Null => {}
    }
    check_combinators(schema, value, path, report);
    check_cel_rules(schema, value, path, report, mode);
}

fn check_string(schema: &Map<String, Value>, text: &str, path: &str, report: &mut Report, mode: Mode) {
    // Kubernetes counts characters (runes), not bytes.
    let length = text.chars().count() as u64;
    if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
        if length < min {
            report.errors.push(format!("{}: {length} characters, fewer than minLength {min}", shown(path)));
        }
    }
    if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
        if length > max {
            report.errors.push(format!("{}: {length} characters, more than maxLength {max}", shown(path)));
        }
    }
    if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
        if mode == Mode::Document {
            report.not_evaluated.push(format!("{}: pattern {pattern}", shown(path)));
        }
    }
}

fn check_number(schema: &Map<String, Value>, number: f64, path: &str, report: &mut Report) {
    // OpenAPI v3.0: exclusiveMinimum/exclusiveMaximum are booleans qualifying minimum/maximum.
    let exclusive = |name: &str| schema.get(name).and_then(Value::as_bool).unwrap_or(false);
    if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
        if number < min || (exclusive("exclusiveMinimum") && number == min) {
            report.errors.push(format!("{}: {number} is below the minimum {min}", shown(path)));
        }
    }
    if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
        if number > max || (exclusive("exclusiveMaximum") && number == max) {
            report.errors.push(format!("{}: {number} is above the maximum {max}", shown(path)));
        }
    }
}

fn check_array(schema: &Map<String, Value>, items: &[Value], path: &str, report: &mut Report, mode: Mode) {
    let count = items.len() as u64;
    if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
        if count < min {
            report.errors.push(format!("{}: {count} items, fewer than minItems {min}", shown(path)));
        }
    }
    if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
        if count > max {
            report.errors.push(format!("{}: {count} items, more than maxItems {max}", shown(path)));
        }
    }
    if let Some(item_schema) = schema.get("items") {
        for (index, item) in items.iter().enumerate() {
            check(item_schema, item, &format!("{path}[{index}]"), report, mode);
        }
    }
    // List types: the API server rejects duplicates in a `set`, and duplicate keys in a `map` (entries that a
    // server-side apply would merge into one).
    match schema.get("x-kubernetes-list-type").and_then(Value::as_str) {
        Some("set") => {
            for (index, item) in items.iter().enumerate() {
                if items[..index].contains(item) {
                    report.errors.push(format!("{path}[{index}]: duplicate entry in a set list"));
                }
            }
        }
        Some("map") => {
            let keys: Vec<&str> = schema
                .get("x-kubernetes-list-map-keys")
                .and_then(Value::as_array)
                .map(|keys| keys.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            let key_of = |item: &Value| keys.iter().map(|key| item.get(*key).cloned()).collect::<Vec<_>>();
            for (index, item) in items.iter().enumerate() {
                let key = key_of(item);
                if items[..index].iter().any(|earlier| key_of(earlier) == key) {
                    let shown_key: Vec<String> = keys
                        .iter()
                        .zip(&key)
                        .map(|(name, value)| {
                            format!("{name}={}", value.as_ref().map_or("(unset)".into(), Value::to_string))
                        })
                        .collect();
                    report.errors.push(format!("{path}[{index}]: duplicate entry for {}", shown_key.join(", ")));
                }
            }
        }
        _ => {}
    }
}

fn check_object(schema: &Map<String, Value>, fields: &Map<String, Value>, path: &str, report: &mut Report, mode: Mode) {
    let properties = schema.get("properties").and_then(Value::as_object);
    let count = fields.len() as u64;
    if let Some(min) = schema.get("minProperties").and_then(Value::as_u64) {
        if count < min {
            report.errors.push(format!("{}: {count} fields, fewer than minProperties {min}", shown(path)));
        }
    }
    if let Some(max) = schema.get("maxProperties").and_then(Value::as_u64) {
        if count > max {
            report.errors.push(format!("{}: {count} fields, more than maxProperties {max}", shown(path)));
        }
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if fields.get(name).is_none_or(Value::is_null) {
                report.errors.push(format!("{}: required field is missing", field_path(path, name)));
            }
        }
    }
    let preserve_unknown = schema.get("x-kubernetes-preserve-unknown-fields").and_then(Value::as_bool) == Some(true);
    // Whether this schema describes the object's fields at all: a branch listing only `required`, or a schema
    // without a type, says nothing about which other fields may exist.
    let structural = mode == Mode::Document
        && (schema.get("type").and_then(Value::as_str) == Some("object") || properties.is_some());
    for (name, field) in fields {
        let field_at = field_path(path, name);
        if let Some(field_schema) = properties.and_then(|p| p.get(name)) {
            check(field_schema, field, &field_at, report, mode);
            continue;
        }
        match schema.get("additionalProperties") {
            Some(Value::Bool(true)) => {}
            Some(extra @ Value::Object(_)) => check(extra, field, &field_at, report, mode),
            _ if preserve_unknown || !structural => {}
            _ => {
                report.errors.push(format!("{field_at}: unknown field (not in the schema; Kubernetes would prune it)"))
            }
        }
    }
}

/// Whether `value` satisfies `schema` as a constraint (no structural checks, nothing reported).
fn matches(schema: &Value, value: &Value, path: &str) -> bool {
    let mut scratch = Report::default();
    check(schema, value, path, &mut scratch, Mode::Branch);
    scratch.errors.is_empty()
}

fn check_combinators(schema: &Map<String, Value>, value: &Value, path: &str, report: &mut Report) {
    let branches = |name: &str| schema.get(name).and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
    for branch in branches("allOf") {
        check(branch, value, path, report, Mode::Branch);
    }
    let any_of = branches("anyOf");
    if !any_of.is_empty() && !any_of.iter().any(|branch| matches(branch, value, path)) {
        let alternatives: Vec<String> = any_of.iter().map(describe_schema).collect();
        report.errors.push(format!("{}: matches none of: {}", shown(path), alternatives.join("; ")));
    }
    let one_of = branches("oneOf");
    if !one_of.is_empty() {
        let matching: Vec<&Value> = one_of.iter().filter(|branch| matches(branch, value, path)).collect();
        if matching.len() != 1 {
            report.errors.push(match at_most_one_of(one_of) {
                // Istio's rendering of a protobuf `oneof`: none, or exactly one of these fields.
                Some(fields) => {
                    let set: Vec<&str> = fields.iter().copied().filter(|f| value.get(*f).is_some()).collect();
                    format!(
                        "{}: at most one of {} may be set, found {}",
                        shown(path),
                        fields.join(", "),
                        set.join(", ")
                    )
                }
                None => {
                    let alternatives: Vec<String> = one_of.iter().map(describe_schema).collect();
                    format!(
                        "{}: must match exactly one of [{}], matches {}",
                        shown(path),
                        alternatives.join("; "),
                        matching.len()
                    )
                }
            });
        }
    }
    if let Some(negated) = schema.get("not") {
        if matches(negated, value, path) {
            report.errors.push(format!("{}: must not match {}", shown(path), describe_schema(negated)));
        }
    }
}

/// The field names of a `oneOf` of the form `[not: {anyOf: [required: [a], required: [b], …]}, required: [a],
/// required: [b], …]`, which is how Istio's generator says "at most one of a, b, …".
fn at_most_one_of(one_of: &[Value]) -> Option<Vec<&str>> {
    let (first, rest) = one_of.split_first()?;
    let negated = first.get("not")?.get("anyOf")?.as_array()?;
    let fields: Vec<&str> = rest.iter().map(single_required).collect::<Option<_>>()?;
    let negated_fields: Vec<&str> = negated.iter().map(single_required).collect::<Option<_>>()?;
    (fields == negated_fields).then_some(fields)
}

/// The field name of a branch that is exactly `required: [name]`.
fn single_required(branch: &Value) -> Option<&str> {
    let branch = branch.as_object()?;
    match (branch.len(), branch.get("required")?.as_array()?.as_slice()) {
        (1, [name]) => name.as_str(),
        _ => None,
    }
}

/// A combinator branch, briefly: `required [wasm]`, `type integer`, `not (…)`.
fn describe_schema(schema: &Value) -> String {
    let Some(schema) = schema.as_object() else { return "a schema".into() };
    let mut parts = Vec::new();
    if let Some(type_name) = schema.get("type").and_then(Value::as_str) {
        parts.push(format!("type {type_name}"));
    }
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        let names: Vec<&str> = required.iter().filter_map(Value::as_str).collect();
        parts.push(format!("required [{}]", names.join(", ")));
    }
    for combinator in ["anyOf", "oneOf", "allOf"] {
        if let Some(branches) = schema.get(combinator).and_then(Value::as_array) {
            let inner: Vec<String> = branches.iter().map(describe_schema).collect();
            parts.push(format!("{combinator} ({})", inner.join("; ")));
        }
    }
    if let Some(negated) = schema.get("not") {
        parts.push(format!("not ({})", describe_schema(negated)));
    }
    if parts.is_empty() {
        "a schema".into()
    } else {
        parts.join(" and ")
    }
}

fn check_cel_rules(schema: &Map<String, Value>, value: &Value, path: &str, report: &mut Report, mode: Mode) {
    let Some(rules) = schema.get("x-kubernetes-validations").and_then(Value::as_array) else { return };
    for rule in rules {
        let text = rule.get("rule").and_then(Value::as_str).unwrap_or_default();
        let message = rule.get("message").and_then(Value::as_str);
        match (at_most_n_present(text), value.as_object()) {
            (Some((fields, limit)), Some(object)) => {
                let set: Vec<&str> = fields
                    .iter()
                    .map(String::as_str)
                    .filter(|f| object.get(*f).is_some_and(|v| !v.is_null()))
                    .collect();
                if set.len() > limit {
                    let message = message
                        .map_or_else(|| format!("at most {limit} of {} may be set", fields.join(", ")), str::to_string);
                    report.errors.push(format!("{}: {message} (set: {})", shown(path), set.join(", ")));
                }
            }
            _ if mode == Mode::Document => {
                let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
                let message = message.map(|m| format!(" ({m})")).unwrap_or_default();
                report.not_evaluated.push(format!("{}: CEL rule {text}{message}", shown(path)));
            }
            _ => {}
        }
    }
}

/// Recognises the CEL rule `(has(self.a) ? 1 : 0) + (has(self.b) ? 1 : 0) + … <= N`: the field names and N.
fn at_most_n_present(rule: &str) -> Option<(Vec<String>, usize)> {
    let (sum, limit) = rule.rsplit_once("<=")?;
    let limit = limit.trim().parse().ok()?;
    let fields = sum
        .split('+')
        .map(|term| {
            // `(has(self.name) ? 1 : 0)` with any spacing, including the line breaks of a folded YAML scalar.
            let compact: String = term.chars().filter(|c| !c.is_whitespace()).collect();
            let name = compact.strip_prefix("(has(self.")?.strip_suffix(")?1:0)")?;
            let plain = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            plain.then(|| name.to_string())
        })
        .collect::<Option<Vec<_>>>()?;
    Some((fields, limit))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schemas(crd_schema: Value) -> CrdSchemas {
        let crd = json!({
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.io"},
            "spec": {
                "group": "example.io",
                "names": {"kind": "Widget"},
                "versions": [{"name": "v1", "schema": {"openAPIV3Schema": crd_schema}}],
            },
        });
        CrdSchemas::parse(&serde_yaml_ng::to_string(&crd).unwrap()).unwrap()
    }

    fn widget(spec: Value) -> Value {
        json!({"apiVersion": "example.io/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": spec})
    }

    /// Sorted: the order of fields in a map is not part of what is checked.
    fn errors(schema: &CrdSchemas, spec: Value) -> Vec<String> {
        let mut errors = schema.validate(&widget(spec)).unwrap();
        errors.sort();
        errors
    }

    fn spec_schema(spec: Value) -> CrdSchemas {
        schemas(json!({"type": "object", "properties": {"spec": spec}}))
    }

    #[test]
    fn types_enums_and_bounds() {
        let schema = spec_schema(json!({
            "type": "object",
            "properties": {
                "mode": {"type": "string", "enum": ["A", "B"]},
                "name": {"type": "string", "minLength": 1, "maxLength": 3},
                "port": {"type": "integer", "minimum": 1, "maximum": 65535},
                "ratio": {"type": "number"},
                "on": {"type": "boolean"},
                "tags": {"type": "array", "maxItems": 2, "minItems": 1, "items": {"type": "string"}},
            },
        }));
        assert_eq!(
            errors(&schema, json!({"mode": "A", "name": "abc", "port": 443, "ratio": 0.5, "on": true, "tags": ["x"]})),
            Vec::<String>::new()
        );
        assert_eq!(
            errors(
                &schema,
                json!({"mode": "C", "name": "", "port": 0, "ratio": "1", "on": "yes", "tags": ["x", 1, "z"]})
            ),
            [
                "spec.mode: string \"C\" is not one of A, B",
                "spec.name: 0 characters, fewer than minLength 1",
                "spec.on: expected boolean, found string \"yes\"",
                "spec.port: 0 is below the minimum 1",
                "spec.ratio: expected number, found string \"1\"",
                "spec.tags: 3 items, more than maxItems 2",
                "spec.tags[1]: expected string, found number 1",
            ]
        );
        assert_eq!(errors(&schema, json!({"port": 70000, "name": "four"})).len(), 2);
        assert_eq!(errors(&schema, json!({"port": 8.5})), ["spec.port: expected integer, found number 8.5"]);
    }

    #[test]
    fn required_fields_are_reported_at_their_own_path() {
        let schema =
            spec_schema(json!({"type": "object", "required": ["url"], "properties": {"url": {"type": "string"}}}));
        assert_eq!(errors(&schema, json!({})), ["spec.url: required field is missing"]);
        let without_spec = schemas(json!({"type": "object", "required": ["spec"], "properties": {"spec": {}}}));
        let document = json!({"apiVersion": "example.io/v1", "kind": "Widget"});
        assert_eq!(without_spec.validate(&document).unwrap(), ["spec: required field is missing"]);
    }

    #[test]
    fn unknown_fields_are_errors_unless_preserved_or_additional() {
        let schema = spec_schema(json!({
            "type": "object",
            "properties": {
                "config": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "anything": {"type": "object", "additionalProperties": true},
                "closed": {"type": "object", "properties": {"a": {"type": "string"}}},
            },
        }));
        let spec = json!({
            "config": {"deep": {"nested": [1, {"x": null}]}},
            "labels": {"app.kubernetes.io/name": "x", "n": 1},
            "anything": {"k": [1]},
            "closed": {"a": "x", "b": "y"},
            "colour": "red",
        });
        assert_eq!(
            errors(&schema, spec),
            [
                "spec.closed.b: unknown field (not in the schema; Kubernetes would prune it)",
                "spec.colour: unknown field (not in the schema; Kubernetes would prune it)",
                "spec.labels.n: expected string, found number 1",
            ]
        );
    }

    #[test]
    fn metadata_is_checked_as_object_meta() {
        let schema = spec_schema(json!({"type": "object"}));
        let document = json!({
            "apiVersion": "example.io/v1",
            "kind": "Widget",
            "metadata": {"name": "w", "labels": {"sidecar.istio.io/inject": true}, "nmespace": "x"},
        });
        assert_eq!(
            schema.validate(&document).unwrap(),
            [
                "metadata.labels[\"sidecar.istio.io/inject\"]: expected string, found boolean true",
                "metadata.nmespace: unknown field (not in the schema; Kubernetes would prune it)",
            ]
        );
    }

    #[test]
    fn null_is_an_error_unless_nullable() {
        let schema = spec_schema(json!({
            "type": "object",
            "properties": {"priority": {"type": "integer", "nullable": true}, "name": {"type": "string"}},
        }));
        assert_eq!(errors(&schema, json!({"priority": null})), Vec::<String>::new());
        assert_eq!(
            errors(&schema, json!({"name": null})),
            ["spec.name: null is not allowed here (the field is not nullable)"]
        );
    }

    #[test]
    fn int_or_string() {
        let schema = spec_schema(json!({
            "type": "object",
            "properties": {"port": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]}},
        }));
        assert!(errors(&schema, json!({"port": 80})).is_empty());
        assert!(errors(&schema, json!({"port": "http"})).is_empty());
        assert_eq!(
            errors(&schema, json!({"port": [80]})),
            ["spec.port: expected an integer or a string, found an array of 1"]
        );
    }

    #[test]
    fn one_of_as_istio_writes_it_means_at_most_one() {
        let schema = spec_schema(json!({
            "type": "object",
            "oneOf": [
                {"not": {"anyOf": [{"required": ["wasm"]}, {"required": ["lua"]}]}},
                {"required": ["wasm"]},
                {"required": ["lua"]},
            ],
            "properties": {"wasm": {"type": "object"}, "lua": {"type": "object"}},
        }));
        assert!(errors(&schema, json!({})).is_empty());
        assert!(errors(&schema, json!({"lua": {}})).is_empty());
        assert_eq!(
            errors(&schema, json!({"lua": {}, "wasm": {}})),
            ["spec: at most one of wasm, lua may be set, found wasm, lua"]
        );
    }

    #[test]
    fn other_combinators() {
        let schema = spec_schema(json!({
            "type": "object",
            "properties": {
                "exactly": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "oneOf": [{"required": ["a"]}, {"required": ["b"]}]},
                "some": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "anyOf": [{"required": ["a"]}, {"required": ["b"]}]},
                "never": {"type": "object", "x-kubernetes-preserve-unknown-fields": true, "not": {"required": ["a"]}},
                "both": {"type": "string", "allOf": [{"minLength": 2}, {"maxLength": 3}]},
            },
        }));
        let fine = json!({"exactly": {"a": 1}, "some": {"a": 1, "b": 2}, "never": {"b": 1}, "both": "ab"});
        assert!(errors(&schema, fine).is_empty());
        let broken = json!({"exactly": {"a": 1, "b": 2}, "some": {}, "never": {"a": 1}, "both": "abcd"});
        assert_eq!(
            errors(&schema, broken),
            [
                "spec.both: 4 characters, more than maxLength 3",
                "spec.exactly: must match exactly one of [required [a]; required [b]], matches 2",
                "spec.never: must not match required [a]",
                "spec.some: matches none of: required [a]; required [b]",
            ]
        );
    }

    #[test]
    fn list_types_reject_duplicates() {
        let schema = spec_schema(json!({
            "type": "object",
            "properties": {
                "env": {
                    "type": "array",
                    "x-kubernetes-list-type": "map",
                    "x-kubernetes-list-map-keys": ["name"],
                    "items": {"type": "object", "properties": {"name": {"type": "string"}, "value": {"type": "string"}}},
                },
                "hosts": {"type": "array", "x-kubernetes-list-type": "set", "items": {"type": "string"}},
            },
        }));
        let spec = json!({
            "env": [{"name": "A", "value": "1"}, {"name": "B"}, {"name": "A", "value": "2"}],
            "hosts": ["x", "y", "x"],
        });
        assert_eq!(
            errors(&schema, spec),
            ["spec.env[2]: duplicate entry for name=\"A\"", "spec.hosts[2]: duplicate entry in a set list"]
        );
    }

    #[test]
    fn the_at_most_one_cel_rule_is_evaluated_and_others_are_listed() {
        let rule =
            "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0)\n  + (has(self.targetRefs) ? 1 : 0) <= 1";
        let schema = spec_schema(json!({
            "type": "object",
            "x-kubernetes-validations": [
                {"message": "only one of targetRefs or selector can be set", "rule": rule},
                {"message": "url must have a scheme", "rule": "isURL(self.url)"},
            ],
            "properties": {
                "selector": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "targetRef": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                "targetRefs": {"type": "array"},
                "url": {"type": "string", "pattern": "^oci://"},
            },
        }));
        let report = schema.check(&widget(json!({"selector": {}, "url": "oci://x"}))).unwrap();
        assert_eq!(
            report,
            Report {
                errors: Vec::new(),
                not_evaluated: vec![
                    "spec.url: pattern ^oci://".into(),
                    "spec: CEL rule isURL(self.url) (url must have a scheme)".into(),
                ],
            }
        );
        assert_eq!(
            errors(&schema, json!({"selector": {}, "targetRefs": []})),
            ["spec: only one of targetRefs or selector can be set (set: selector, targetRefs)"]
        );
    }

    #[test]
    fn the_rule_recogniser_reads_only_its_own_shape() {
        let fields = |names: &[&str]| names.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(
            at_most_n_present("(has(self.a) ? 1 : 0) + (has(self.b) ? 1 : 0) <= 1"),
            Some((fields(&["a", "b"]), 1))
        );
        assert_eq!(at_most_n_present("(has(self.a) ? 1 : 0) <= 0"), Some((fields(&["a"]), 0)));
        assert_eq!(at_most_n_present("(has(self.a) ? 2 : 0) + (has(self.b) ? 1 : 0) <= 1"), None);
        assert_eq!(at_most_n_present("(has(self.a.b) ? 1 : 0) <= 1"), None);
        assert_eq!(at_most_n_present("self.size() <= 1"), None);
    }

    #[test]
    fn unknown_kinds_and_versions_have_no_schema() {
        let schema = spec_schema(json!({"type": "object"}));
        let other = json!({"apiVersion": "example.io/v2", "kind": "Widget"});
        assert_eq!(schema.validate(&other), Err("no schema for apiVersion example.io/v2 kind Widget".into()));
        let core = json!({"apiVersion": "v1", "kind": "ConfigMap"});
        assert_eq!(schema.validate(&core), Err("no schema for apiVersion v1 kind ConfigMap".into()));
        assert!(CrdSchemas::parse("kind: ConfigMap\n").is_err());
    }
}
