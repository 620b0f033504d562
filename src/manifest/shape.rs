//! Every structural error of a manifest document at once: unknown keys and
//! values of the wrong kind, each at its own line and column.
//!
//! serde stops at the first problem, so a file with three typos would take
//! three rounds of `berth validate`. This pass walks the location tree of
//! a document against the manifest's JSON Schema (the one `berth schema`
//! prints, generated from the types in `types.rs`), so the known keys and
//! their kinds are written down once, in those types. The typed pass still
//! decides: these errors are shown only for a file it refuses.
//!
//! Messages name the position, the path of berth's own keys and what to
//! do. They never show a value, nor an unknown key's text: the closest key
//! berth knows is suggested instead.

use std::sync::OnceLock;

use serde_json::Value;
use serde_saphyr::Spanned;

use super::duration::Duration;
use super::parse::{
    closest, excerpt, location_trees, parse_manifest_file, ManifestError, Node, ParsedTask, Pos,
    Scalar, HIDDEN, MAX_FILE_BYTES,
};

/// [`parse_manifest_file`], and when it fails, every structural error of
/// the file with it, sorted by position.
pub fn parse_all(display_path: &str, text: &str) -> Result<Vec<ParsedTask>, Vec<ManifestError>> {
    parse_manifest_file(display_path, text).map_err(|first| {
        // Without a tree (a syntax error, a file over the size limit) the
        // first error is all there is.
        if text.len() as u64 > MAX_FILE_BYTES {
            return first;
        }
        let Ok(trees) = location_trees(text) else {
            return first;
        };
        let mut errors: Vec<ManifestError> = trees
            .iter()
            .flat_map(|root| check(display_path, root))
            .collect();
        // The typed pass names the same problem at its key or its value.
        for e in first {
            if !errors.iter().any(|s| s.line == e.line) {
                errors.push(e);
            }
        }
        in_order(errors)
    })
}

/// The most errors shown for one file; a file with more is more likely not
/// a manifest at all than a manifest with that many typos.
pub const MAX_ERRORS_PER_FILE: usize = 50;

/// A file's errors sorted by position, at most [`MAX_ERRORS_PER_FILE`] of
/// them and then one that counts the rest.
pub fn in_order(mut errors: Vec<ManifestError>) -> Vec<ManifestError> {
    errors.sort_by_key(|e| (e.line, e.column));
    if errors.len() > MAX_ERRORS_PER_FILE {
        let rest = errors.len() - MAX_ERRORS_PER_FILE;
        errors.truncate(MAX_ERRORS_PER_FILE);
        let last = &errors[MAX_ERRORS_PER_FILE - 1];
        let more = ManifestError {
            file: last.file.clone(),
            line: last.line,
            column: last.column,
            message: format!("and {rest} more errors in this file"),
        };
        errors.push(more);
    }
    errors
}

/// Every structural error of one document, in document order.
fn check(file: &str, root: &Spanned<Node>) -> Vec<ManifestError> {
    let schema = schema();
    let checker = Checker {
        file,
        defs: &schema["$defs"],
    };
    checker.check(root, schema, "", true)
}

fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(super::manifest_schema)
}

struct Checker<'a> {
    file: &'a str,
    defs: &'a Value,
}

/// What a node is, in the schema's words.
fn kind(node: &Node) -> &'static str {
    match node {
        Node::Map(_) => "object",
        Node::Seq(_) => "array",
        Node::Scalar(Scalar::Null) => "null",
        Node::Scalar(Scalar::Bool) => "boolean",
        Node::Scalar(Scalar::Int(_)) => "integer",
        Node::Scalar(Scalar::Float) => "number",
        Node::Scalar(Scalar::Text(_)) => "string",
    }
}

/// Whether the typed pass reads `node` as a `want`: YAML's plain scalars
/// are text to a string field, and quoted numbers and booleans are read as
/// what they spell.
fn accepts(want: &str, node: &Node) -> bool {
    let have = kind(node);
    if want == have {
        return true;
    }
    let text = match node {
        Node::Scalar(Scalar::Text(text)) => text.as_deref(),
        _ => None,
    };
    match want {
        "string" => matches!(have, "integer" | "boolean" | "number"),
        // Text too long to keep is not judged here: the typed pass will.
        "integer" => have == "string" && text.is_none_or(|t| t.trim().parse::<i128>().is_ok()),
        "boolean" => {
            have == "string"
                && text.is_none_or(|t| {
                    let t = t.trim().to_ascii_lowercase();
                    ["true", "false", "yes", "no", "on", "off", "y", "n"].contains(&t.as_str())
                })
        }
        _ => false,
    }
}

impl Checker<'_> {
    fn error(&self, pos: Pos, path: &str, message: String) -> ManifestError {
        if path.is_empty() {
            ManifestError::new(self.file, pos, message)
        } else {
            ManifestError::new(self.file, pos, format!("`{path}`: {message}"))
        }
    }

    /// The schema behind a `$ref`, and the name of the definition.
    fn resolve<'s>(&'s self, schema: &'s Value) -> (&'s Value, Option<&'s str>) {
        match schema
            .get("$ref")
            .and_then(Value::as_str)
            .and_then(|r| r.strip_prefix("#/$defs/"))
        {
            Some(name) => (&self.defs[name], Some(name)),
            None => (schema, None),
        }
    }

    fn check(
        &self,
        node: &Spanned<Node>,
        schema: &Value,
        path: &str,
        root: bool,
    ) -> Vec<ManifestError> {
        let pos = Pos::of(&node.referenced);
        let written = schema;
        let (schema, def) = self.resolve(schema);
        if def == Some("Duration") {
            return self.check_duration(node, path);
        }
        if let Some(words) = words(schema) {
            return match &node.value {
                Node::Scalar(Scalar::Text(Some(text))) if words.contains(&text.as_str()) => vec![],
                _ => vec![self.error(pos, path, format!("expected one of {}", words.join(", ")))],
            };
        }
        if let Some(branches) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
        {
            return self.check_branches(node, written, branches, path, root);
        }
        let types = types(schema);
        if !types.is_empty() && !types.iter().any(|want| accepts(want, &node.value)) {
            return vec![self.error(pos, path, self.expected(schema, root))];
        }
        match &node.value {
            Node::Map(entries) => self.check_map(node, entries, schema, path),
            Node::Seq(items) => match schema.get("items") {
                Some(item) => items
                    .iter()
                    .enumerate()
                    .flat_map(|(i, n)| self.check(n, item, &format!("{path}[{i}]"), false))
                    .collect(),
                None => vec![],
            },
            Node::Scalar(Scalar::Int(n)) => {
                let min = schema.get("minimum").and_then(Value::as_i64);
                let max = schema.get("maximum").and_then(Value::as_i64);
                let max = max.map(i128::from).or_else(|| {
                    match schema.get("format").and_then(Value::as_str) {
                        Some("uint32") => Some(u32::MAX.into()),
                        Some("uint16") => Some(u16::MAX.into()),
                        _ => None,
                    }
                });
                let low = min.is_some_and(|m| *n < i128::from(m));
                let high = max.is_some_and(|m| *n > m);
                if types.contains(&"integer") && (low || high) {
                    vec![self.error(pos, path, format!("expected {}", self.describe(schema)))]
                } else {
                    vec![]
                }
            }
            Node::Scalar(_) => vec![],
        }
    }

    fn check_map(
        &self,
        node: &Spanned<Node>,
        entries: &[(Spanned<String>, Spanned<Node>)],
        schema: &Value,
        path: &str,
    ) -> Vec<ManifestError> {
        let properties = schema.get("properties").and_then(Value::as_object);
        let extra = schema.get("additionalProperties");
        let mut errors = Vec::new();
        for (key, value) in entries {
            if let Some(sub) = properties.and_then(|p| p.get(&key.value)) {
                errors.extend(self.check(value, sub, &join(path, &key.value), false));
                continue;
            }
            match extra {
                Some(Value::Bool(false)) => {
                    let known: Vec<&str> = properties
                        .map(|p| p.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    errors.push(self.unknown_key(
                        Pos::of(&key.referenced),
                        path,
                        &key.value,
                        &known,
                    ));
                }
                Some(sub @ Value::Object(_)) => {
                    let shown = excerpt(&key.value).unwrap_or(HIDDEN);
                    errors.extend(self.check(value, sub, &join(path, shown), false));
                }
                _ => {}
            }
        }
        for required in schema
            .get("required")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            if !entries.iter().any(|(k, _)| k.value == required) {
                errors.push(self.error(
                    Pos::of(&node.referenced),
                    path,
                    format!("missing required key `{required}`"),
                ));
            }
        }
        errors
    }

    /// An unknown key, named by its position only: its text may be a line
    /// of a file that is not a manifest at all.
    fn unknown_key(&self, pos: Pos, path: &str, typo: &str, known: &[&str]) -> ManifestError {
        let mut message = String::from("unknown key");
        match closest(typo, known) {
            Some(best) => message.push_str(&format!(" (did you mean `{best}`?)")),
            None => message.push_str(&format!("; valid keys here: {}", known.join(", "))),
        }
        self.error(pos, path, message)
    }

    fn check_branches(
        &self,
        node: &Spanned<Node>,
        schema: &Value,
        branches: &[Value],
        path: &str,
        root: bool,
    ) -> Vec<ManifestError> {
        let mut tried = Vec::new();
        for branch in branches {
            let errors = self.check(node, branch, path, root);
            if errors.is_empty() {
                return errors;
            }
            tried.push((branch, errors));
        }
        // A mapping where one branch is a mapping: that branch's errors are
        // the useful ones (a typo inside `auth:`).
        let have = kind(&node.value);
        let mut same_kind = tried.into_iter().filter(|(branch, _)| {
            let (branch, _) = self.resolve(branch);
            types(branch).iter().any(|want| accepts(want, &node.value))
        });
        match (same_kind.next(), same_kind.next()) {
            (Some((_, errors)), None) if have == "object" || have == "array" => errors,
            _ => vec![self.error(Pos::of(&node.referenced), path, self.expected(schema, root))],
        }
    }

    fn check_duration(&self, node: &Spanned<Node>, path: &str) -> Vec<ManifestError> {
        let text = match &node.value {
            Node::Scalar(Scalar::Text(Some(text))) => Some(text.clone()),
            Node::Scalar(Scalar::Int(n)) => Some(n.to_string()),
            _ => None,
        };
        match text.map(|t| t.parse::<Duration>()) {
            Some(Ok(_)) => vec![],
            _ => vec![self.error(
                Pos::of(&node.referenced),
                path,
                format!("expected {}", self.describe(&Value::Null)),
            )],
        }
    }

    fn expected(&self, schema: &Value, root: bool) -> String {
        if root {
            "a manifest document must be a mapping of task fields, e.g. `image: nginx:1.27`".into()
        } else {
            format!("expected {}", self.describe(schema))
        }
    }

    /// What a value of `schema` looks like, in a manifest author's words.
    fn describe(&self, schema: &Value) -> String {
        let (schema, def) = self.resolve(schema);
        if def == Some("Duration") || schema.is_null() {
            return "a duration such as 500ms, 10s, 5m, 1h or 1m30s".into();
        }
        if def == Some("EnvValue") {
            return "a string, a number, a boolean, or a {file: ...} / {value: ...} mapping".into();
        }
        if let Some(words) = words(schema) {
            return format!("one of {}", words.join(", "));
        }
        if let Some(branches) = schema
            .get("anyOf")
            .or_else(|| schema.get("oneOf"))
            .and_then(Value::as_array)
        {
            let parts: Vec<String> = branches
                .iter()
                .filter(|b| types(self.resolve(b).0) != ["null"])
                .map(|b| self.describe(b))
                .collect();
            return parts.join(" or ");
        }
        let parts: Vec<String> = types(schema)
            .into_iter()
            .filter(|t| *t != "null")
            .map(|t| match t {
                "object" => "a mapping (`key: value` lines or `{key: value}`)".to_string(),
                "array" => "a list (`- item` lines or `[a, b]`)".to_string(),
                "boolean" => "true or false".to_string(),
                "integer" => {
                    let max = match schema.get("format").and_then(Value::as_str) {
                        Some("uint16") => Some(u64::from(u16::MAX)),
                        Some("uint32") => Some(u64::from(u32::MAX)),
                        _ => None,
                    };
                    match max {
                        Some(max) => format!("a whole number from 0 to {max}"),
                        None => "a whole number".to_string(),
                    }
                }
                "string" => "a single value, not a list or a mapping".to_string(),
                other => other.to_string(),
            })
            .collect();
        parts.join(" or ")
    }
}

/// The `type` of a schema as a list (`"string"` or `["string", "null"]`).
fn types(schema: &Value) -> Vec<&str> {
    match schema.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

/// The words an enum accepts: `enum: [...]`, `const`, or `oneOf` of consts.
fn words(schema: &Value) -> Option<Vec<&str>> {
    if let Some(list) = schema.get("enum").and_then(Value::as_array) {
        return list.iter().map(Value::as_str).collect();
    }
    if let Some(word) = schema.get("const").and_then(Value::as_str) {
        return Some(vec![word]);
    }
    let branches = schema.get("oneOf").and_then(Value::as_array)?;
    branches
        .iter()
        .map(|b| b.get("const").and_then(Value::as_str))
        .collect()
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(text: &str) -> Vec<String> {
        match parse_all("web.yaml", text) {
            Ok(_) => vec![],
            Err(errors) => errors.iter().map(ToString::to_string).collect(),
        }
    }

    fn tree(text: &str) -> Vec<Spanned<Node>> {
        serde_saphyr::from_multiple(text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn every_unknown_key_and_wrong_kind_of_a_file_is_reported_in_order() {
        let text = "\
name: web
imgae: nginx
count: [1]
ports:
  http: {statik: 80}
restart:
  delay: 10
pull: sometimes
---
name: db
image: postgres
envv: {A: b}
";
        assert_eq!(
            errors(text),
            [
                "web.yaml:1:1: missing required key `image`",
                "web.yaml:2:1: unknown key (did you mean `image`?)",
                "web.yaml:3:8: `count`: expected a whole number from 0 to 4294967295",
                "web.yaml:5:10: `ports.http`: unknown key (did you mean `static`?)",
                "web.yaml:7:10: `restart.delay`: expected a duration such as 500ms, 10s, 5m, 1h or 1m30s",
                "web.yaml:8:7: `pull`: expected one of missing, always, never",
                "web.yaml:12:1: unknown key (did you mean `env`?)",
            ]
        );
    }

    #[test]
    fn an_unknown_key_is_never_quoted_and_far_typos_list_the_valid_keys() {
        let shown = errors("image: x\nupdate:\n  \"root:$6$Xq9secret\": 1\n").join("\n");
        assert_eq!(
            shown,
            "web.yaml:3:3: `update`: unknown key; valid keys here: auto_revert, deadline, min_healthy, order"
        );
    }

    #[test]
    fn values_are_never_quoted() {
        let shown =
            errors("image: x\ncount: Xq9secret\nkind: Xq9secret\nrestart: {delay: Xq9secret}\n");
        assert!(!shown.is_empty());
        assert!(!shown.join("\n").contains("Xq9"), "{shown:?}");
        assert_eq!(shown.len(), 3, "{shown:?}");
    }

    #[test]
    fn nested_and_alternative_shapes_are_checked_inside() {
        let text = "image: x\nauth: {usernme: a}\nenv:\n  A: {fiel: /x}\n  B: [1]\nhealthcheck: {test: CMD}\nport_map: {a: 70000}\n";
        assert_eq!(
            errors(text),
            [
                "web.yaml:2:8: `auth`: unknown key (did you mean `username`?)",
                "web.yaml:4:7: `env.A`: unknown key (did you mean `file`?)",
                "web.yaml:5:6: `env.B`: expected a string, a number, a boolean, or a {file: ...} / {value: ...} mapping",
                "web.yaml:6:21: `healthcheck.test`: expected a list (`- item` lines or `[a, b]`)",
                "web.yaml:7:15: `port_map.a`: expected a whole number from 0 to 65535",
            ]
        );
    }

    /// The check never refuses what the typed pass accepts: every field,
    /// quoted numbers and booleans, YAML's plain scalars as text, nulls
    /// where a field is optional.
    #[test]
    fn a_good_manifest_has_no_shape_errors() {
        let good = "\
name: web
image: 123
command: sh
args: [1, true, x]
entrypoint: [a]
count: \"3\"
env: {A: 1, B: true, C: x, D: {file: f, secret: true}, E: {value: v}}
labels: {a: 1}
ports: {http: {static: 80}, grpc: {}}
port_map: {http: \"8080\"}
resources: {cpu: 100, memory: 64}
network_mode: bridge
hostname:
dns_servers: [1.1.1.1]
dns_search_domains: []
privileged: \"false\"
ipc_mode: ~
pid_mode: null
uts_mode:
volumes: [a:/b]
auth: {username: u, password: p, password_file: f, email: e, server_address: s}
pull: always
restart: {policy: on-failure, delay: 1s, max_delay: 1m30s, reset_after: 10m}
healthcheck: {test: [CMD, x], interval: 5s, timeout: 1s, retries: 3, start_period: 500ms}
stop_timeout: 10s
update: {order: start-first, min_healthy: 0s, deadline: 5m, auto_revert: yes}
depends_on: {db: healthy}
kind: service
schedule: \"* * * * *\"
max_attempts: 2
select: {node.hostname: \"*\"}
";
        assert!(parse_manifest_file("web.yaml", good).is_ok());
        for root in tree(good) {
            assert_eq!(check("web.yaml", &root), vec![], "{good}");
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("manifests");
        for entry in std::fs::read_dir(dir).unwrap() {
            let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
            for root in tree(&text) {
                assert_eq!(check("m.yaml", &root), vec![], "{text}");
            }
        }
    }

    #[test]
    fn a_file_with_very_many_errors_shows_the_first_ones_and_counts_the_rest() {
        let text: String = std::iter::once("image: x\n".to_string())
            .chain((0..80).map(|i| format!("k{i}: 1\n")))
            .collect();
        let shown = errors(&text);
        assert_eq!(shown.len(), MAX_ERRORS_PER_FILE + 1);
        assert!(
            shown[0].starts_with("web.yaml:2:1: unknown key"),
            "{shown:?}"
        );
        assert!(
            shown
                .last()
                .unwrap()
                .ends_with("and 30 more errors in this file"),
            "{shown:?}"
        );
    }
}
