//! YAML text → task manifests, with every error pinned to file:line:column.
//!
//! Each file is read twice by serde-saphyr: once into a generic tree of
//! source locations (so validation can point at any key later), once into
//! [`TaskManifest`]. Both passes run under a tight [`serde_saphyr::Budget`]
//! so a hostile file (alias bomb, deep nesting) fails fast instead of
//! stalling the reconcile loop.

use std::fmt;

use serde::de::{Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_saphyr::Spanned;

use super::TaskManifest;

/// Largest manifest file berth reads. Real manifests are a few KiB; anything
/// far larger is a mistake (or an attack) and would only slow every pass.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// Deepest nesting accepted; a manifest needs about four levels.
const MAX_DEPTH: usize = 24;

/// A problem in a manifest file, located precisely enough for an editor to
/// jump to it. `Display` is the conventional `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ManifestError {
    pub file: String,
    /// 1-based; 0 when the problem concerns the whole file (e.g. unreadable).
    pub line: u64,
    /// 1-based; 0 when unknown.
    pub column: u64,
    pub message: String,
}

impl ManifestError {
    pub fn new(file: &str, pos: Pos, message: impl Into<String>) -> Self {
        ManifestError {
            file: file.to_string(),
            line: pos.line,
            column: pos.column,
            message: message.into(),
        }
    }

    /// An error about a whole file (unreadable, too large, ...).
    pub fn whole_file(file: &str, message: impl Into<String>) -> Self {
        Self::new(file, Pos::UNKNOWN, message)
    }
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}",
            self.file, self.line, self.column, self.message
        )
    }
}

impl std::error::Error for ManifestError {}

/// A 1-based line and column in a manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos {
    pub line: u64,
    pub column: u64,
}

impl Pos {
    pub const UNKNOWN: Pos = Pos { line: 0, column: 0 };

    pub(super) fn of(loc: &serde_saphyr::Location) -> Pos {
        Pos {
            line: loc.line(),
            column: loc.column(),
        }
    }
}

/// One step in a path into a document: a mapping key or a sequence index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// One task document as parsed, before validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedTask {
    pub manifest: TaskManifest,
    /// 1-based line where the document's content starts.
    pub line: u64,
    /// Where every key and value of the document sits in the file.
    pub locations: DocLocations,
}

/// The source locations of one document's nodes, for pointing validation
/// errors at the offending key rather than at the document.
#[derive(Debug, Clone, PartialEq)]
pub struct DocLocations {
    root: Spanned<Node>,
}

#[derive(Debug, Clone, PartialEq)]
pub(super) enum Node {
    Scalar(Scalar),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<String>, Spanned<Node>)>),
}

/// What a scalar is, as far as the schema check needs to know. Text is
/// kept only when short (a duration, an enum word): it is never shown,
/// and a long value cannot be either of those.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Scalar {
    Null,
    Bool,
    Int(i128),
    Float,
    Text(Option<String>),
}

/// The longest text a [`Scalar::Text`] keeps.
const KEPT_TEXT: usize = 64;

impl DocLocations {
    /// Where the document starts.
    pub fn start(&self) -> Pos {
        Pos::of(&self.root.referenced)
    }

    /// The position of the key at `path` (for a sequence item: the item).
    /// Falls back to the nearest existing ancestor, so an error always has
    /// a useful position even if the exact node cannot be found.
    pub fn key(&self, path: &[Seg<'_>]) -> Pos {
        self.find(path, true)
    }

    /// The position of the value at `path`, with the same fallback as [`Self::key`].
    pub fn value(&self, path: &[Seg<'_>]) -> Pos {
        self.find(path, false)
    }

    fn find(&self, path: &[Seg<'_>], want_key: bool) -> Pos {
        let mut node = &self.root;
        let mut best = Pos::of(&node.referenced);
        for (i, seg) in path.iter().enumerate() {
            let last = i + 1 == path.len();
            let next = match (&node.value, seg) {
                (Node::Map(entries), Seg::Key(k)) => {
                    entries
                        .iter()
                        .find(|(key, _)| key.value == *k)
                        .map(|(key, value)| {
                            if last && want_key {
                                best = Pos::of(&key.referenced);
                            } else {
                                // Until the last step, the key is the better anchor for
                                // an error about something below it that is missing.
                                best = if last {
                                    Pos::of(&value.referenced)
                                } else {
                                    Pos::of(&key.referenced)
                                };
                            }
                            value
                        })
                }
                (Node::Seq(items), Seg::Index(n)) => items.get(*n).inspect(|item| {
                    best = Pos::of(&item.referenced);
                }),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => break,
            }
        }
        best
    }

    /// A human path (`restart.delay`, `args[2]`) to the node whose key or value
    /// sits exactly at `pos`, if any. Used to say *which* field a serde
    /// error is about, since serde's own messages often do not.
    fn path_at(&self, pos: Pos) -> Option<String> {
        // A block mapping starts where its first key does, so a position can
        // name both `ports.http` (the value) and `ports.http.statik` (its first
        // key). serde reports unknown fields at the key and type errors at the
        // value; the deepest match is right for the former, the shallowest
        // for the latter, and keys are checked before values to get both.
        fn walk(node: &Spanned<Node>, pos: Pos, prefix: &str) -> Option<String> {
            match &node.value {
                Node::Scalar(_) => None,
                Node::Seq(items) => items.iter().enumerate().find_map(|(i, item)| {
                    let here = format!("{prefix}[{i}]");
                    if Pos::of(&item.referenced) == pos {
                        Some(here)
                    } else {
                        walk(item, pos, &here)
                    }
                }),
                Node::Map(entries) => entries.iter().find_map(|(key, value)| {
                    // A key is text from the file: only a short, plain one
                    // is shown (the file may not be a manifest at all).
                    let shown = excerpt(&key.value).unwrap_or(HIDDEN);
                    let here = if prefix.is_empty() {
                        shown.to_string()
                    } else {
                        format!("{prefix}.{shown}")
                    };
                    if Pos::of(&key.referenced) == pos {
                        Some(here)
                    } else if Pos::of(&value.referenced) == pos {
                        // Prefer the value itself unless one of its own keys
                        // is the exact match (handled by the caller's order).
                        walk(value, pos, &here).or(Some(here))
                    } else {
                        walk(value, pos, &here)
                    }
                }),
            }
        }
        walk(&self.root, pos, "")
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct NodeVisitor;
        impl<'de> Visitor<'de> for NodeVisitor {
            type Value = Node;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any YAML value")
            }
            fn visit_bool<E>(self, _: bool) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Bool))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Int(v.into())))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Int(v.into())))
            }
            fn visit_i128<E>(self, v: i128) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Int(v)))
            }
            fn visit_u128<E>(self, v: u128) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Int(
                    i128::try_from(v).unwrap_or(i128::MAX),
                )))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Float))
            }
            fn visit_str<E>(self, v: &str) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Text(
                    (v.len() <= KEPT_TEXT).then(|| v.to_string()),
                )))
            }
            fn visit_bytes<E>(self, _: &[u8]) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Text(None)))
            }
            fn visit_unit<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Null))
            }
            fn visit_none<E>(self) -> Result<Node, E> {
                Ok(Node::Scalar(Scalar::Null))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
                Node::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element::<Spanned<Node>>()? {
                    items.push(item);
                }
                Ok(Node::Seq(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
                    let value = map.next_value::<Spanned<Node>>()?;
                    let key = Spanned::new(key.value.0, key.referenced, key.defined);
                    entries.push((key, value));
                }
                Ok(Node::Map(entries))
            }
        }
        d.deserialize_any(NodeVisitor)
    }
}

/// A mapping key as text. Keys that are themselves collections are refused:
/// no manifest field uses them, and they would only hide a typo.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = KeyText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a plain mapping key")
            }
            fn visit_str<E>(self, v: &str) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_bool<E>(self, v: bool) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_i64<E>(self, v: i64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_u64<E>(self, v: u64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_f64<E>(self, v: f64) -> Result<KeyText, E> {
                Ok(KeyText(v.to_string()))
            }
            fn visit_unit<E>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
            fn visit_none<E>(self) -> Result<KeyText, E> {
                Ok(KeyText(String::new()))
            }
        }
        d.deserialize_any(KeyVisitor)
    }
}

/// Parser limits for manifests. A real manifest has a handful of anchors at
/// most and is four levels deep; these caps leave ample room for that while
/// making alias bombs and nesting attacks fail in microseconds.
fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_reader_input_bytes = Some(MAX_FILE_BYTES as usize);
    budget.max_events = 200_000;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_depth = MAX_DEPTH;
    budget.max_documents = 256;
    budget.max_nodes = 100_000;
    budget.max_total_scalar_bytes = MAX_FILE_BYTES as usize;
    budget.max_recorded_anchor_events = 5_000;
    budget.max_recorded_anchor_bytes = MAX_FILE_BYTES as usize;
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = 5_000;
    alias_limits.max_replay_stack_depth = 16;
    serde_saphyr::options! {
        budget: Some(budget),
        alias_limits: alias_limits,
        with_snippet: false,
    }
}

/// Parse every document of one manifest file.
///
/// All-or-nothing: any error means no task from this file is returned, so a
/// half-written file never applies partially. Empty documents are skipped.
/// It stops at the first error; `shape::parse_all` adds every other
/// structural error of the file.
pub fn parse_manifest_file(
    display_path: &str,
    text: &str,
) -> Result<Vec<ParsedTask>, Vec<ManifestError>> {
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(vec![ManifestError::whole_file(
            display_path,
            format!(
                "file is {} bytes, larger than the {MAX_FILE_BYTES}-byte limit for a manifest",
                text.len()
            ),
        )]);
    }
    // The location tree first: it accepts any well-formed YAML, so its errors
    // are syntax or budget errors, and once it succeeds we can name the field
    // behind any type error from the typed pass.
    let trees = location_trees(text).map_err(|e| vec![from_saphyr(display_path, &e, &[])])?;
    let docs: Vec<Spanned<TaskManifest>> =
        serde_saphyr::from_multiple_with_options(text, options()).map_err(|e| {
            let locations: Vec<DocLocations> = trees
                .iter()
                .map(|root| DocLocations { root: root.clone() })
                .collect();
            vec![from_saphyr(display_path, &e, &locations)]
        })?;
    if docs.len() != trees.len() {
        // Both passes skip the same empty documents; if they ever disagree we
        // cannot trust the locations, so refuse rather than mislabel errors.
        return Err(vec![ManifestError::whole_file(
            display_path,
            "internal error: could not align documents with their locations",
        )]);
    }
    Ok(docs
        .into_iter()
        .zip(trees)
        .map(|(doc, root)| ParsedTask {
            line: doc.referenced.line(),
            manifest: doc.value,
            locations: DocLocations { root },
        })
        .collect())
}

/// Where every node of every document of `text` sits; fails only on YAML
/// syntax errors and budget breaches.
pub(super) fn location_trees(text: &str) -> Result<Vec<Spanned<Node>>, serde_saphyr::Error> {
    serde_saphyr::from_multiple_with_options(text, options())
}

/// What an error shows instead of text from the file that is not a short,
/// plain word.
pub(super) const HIDDEN: &str = "(text not shown)";

/// `text` when it is a short, plain word (`[A-Za-z0-9_.-]{1,20}`): safe to
/// echo. Anything else may be a line of a file that is not a manifest at
/// all (a symlink to a password file), so errors never copy it: an unknown
/// key that is not such a word is named by its position only.
pub fn excerpt(text: &str) -> Option<&str> {
    let plain = (1..=20).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    plain.then_some(text)
}

/// Every `` `quoted` `` or `"quoted"` part of a parser message replaced by
/// its [`excerpt`], or by [`HIDDEN`]: serde and the YAML parser quote the
/// file's own text (unknown keys, wrong values) in their messages.
fn scrub(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.char_indices().peekable();
    while let Some((_, c)) = chars.next() {
        if c != '`' && c != '"' {
            out.push(c);
            continue;
        }
        let mut inner = String::new();
        let mut closed = false;
        while let Some((_, d)) = chars.next() {
            if d == '\\' && c == '"' {
                if let Some((_, escaped)) = chars.next() {
                    inner.push('\\');
                    inner.push(escaped);
                }
                continue;
            }
            if d == c {
                closed = true;
                break;
            }
            inner.push(d);
        }
        out.push(c);
        out.push_str(excerpt(&inner).unwrap_or(HIDDEN));
        if closed {
            out.push(c);
        }
    }
    out
}

/// Turn a serde-saphyr error into a located, actionable message. Text the
/// parser copied from the file is kept only as a short plain excerpt.
fn from_saphyr(file: &str, err: &serde_saphyr::Error, docs: &[DocLocations]) -> ManifestError {
    let pos = err.location().map(|l| Pos::of(&l)).unwrap_or(Pos::UNKNOWN);
    let mut message = err.to_string();
    // serde-saphyr appends the location; we print it as file:line:column already.
    let suffix = format!(" at line {}, column {}", pos.line, pos.column);
    if let Some(stripped) = message.strip_suffix(&suffix) {
        message = stripped.to_string();
    }
    let message = scrub(&message);
    let mut message = unquoted_value(&message);
    if let Some(detail) = message.strip_prefix("budget breached: ") {
        let detail = detail.split(" at line ").next().unwrap_or(detail);
        return ManifestError::new(
            file,
            pos,
            format!(
                "the file exceeds berth's limits for a manifest ({detail}); \
                 manifests may not nest deeper than {MAX_DEPTH} levels or expand YAML aliases this much"
            ),
        );
    }
    let path = docs.iter().find_map(|d| d.path_at(pos));
    if let Some(friendly) = explain_unknown_field(&message, path.as_deref()) {
        return ManifestError::new(file, pos, friendly);
    }
    message = plain_words(&message, path.is_none());
    if message.contains("untagged enum EnvValue") {
        // Only reached if a future EnvValue goes back to `untagged`; keep it readable.
        message =
            "an env value must be a string, a number, a boolean, or {file: ...} / {value: ...}"
                .to_string();
    }
    match path {
        Some(path) => ManifestError::new(file, pos, format!("`{path}`: {message}")),
        None => ManifestError::new(file, pos, message),
    }
}

/// serde's `invalid type: string xyz, expected ...` can carry the value
/// without quotes (for some kinds); keep only the kind and what was expected.
fn unquoted_value(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix) {
            let expected = rest
                .rsplit_once(", expected ")
                .map(|(_, e)| e)
                .unwrap_or("something else");
            let kind = [
                "string",
                "integer",
                "floating point",
                "boolean",
                "map",
                "sequence",
                "unit value",
                "char",
                "null",
            ]
            .into_iter()
            .find(|k| rest.starts_with(k));
            return match kind {
                Some(kind) => format!("{prefix}{kind}, expected {expected}"),
                None => format!("{prefix}expected {expected}"),
            };
        }
    }
    message.to_string()
}

/// serde-saphyr's terse type messages, in words a manifest author uses.
fn plain_words(message: &str, at_root: bool) -> String {
    let replaced = match message {
        "invalid u16" => "expected a whole number from 0 to 65535",
        "invalid u32" => "expected a whole number from 0 to 4294967295",
        "expected string scalar" => "expected a single value here, not a list or a mapping",
        "expected mapping start" if at_root => {
            "a manifest document must be a mapping of task fields, e.g. `image: nginx:1.27`"
        }
        "expected mapping start" => "expected a mapping (`key: value` lines or `{key: value}`)",
        "expected sequence start" => "expected a list (`- item` lines or `[a, b]`)",
        _ => {
            if let Some(rest) = message.strip_prefix("duplicate mapping key: ") {
                let key = rest
                    .split(", set DuplicateKeyPolicy")
                    .next()
                    .unwrap_or(rest);
                let key = excerpt(key).unwrap_or(HIDDEN);
                return format!("key `{key}` appears twice in the same mapping");
            }
            message
        }
    };
    replaced.to_string()
}

/// serde says "unknown field `imgae`, expected one of a, b, c". Rephrase it
/// around the key the person wrote and suggest the closest valid key.
fn explain_unknown_field(message: &str, path: Option<&str>) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (key, rest) = rest.split_once('`')?;
    let valid: Vec<&str> = rest
        .split_once("expected one of ")
        .or_else(|| rest.split_once("expected "))
        .map(|(_, list)| {
            list.split(", ")
                .map(|k| k.trim().trim_matches('`'))
                .filter(|k| !k.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let parent = path.and_then(|p| {
        p.rsplit_once(['.', '['])
            .map(|(parent, _)| parent.to_string())
    });
    let mut out = format!("unknown key `{key}`");
    if let Some(parent) = parent {
        out.push_str(&format!(" in `{parent}`"));
    }
    if let Some(best) = closest(key, &valid) {
        out.push_str(&format!(" (did you mean `{best}`?)"));
    }
    if !valid.is_empty() {
        out.push_str(&format!("; valid keys here: {}", valid.join(", ")));
    }
    Some(out)
}

/// The valid key nearest to a typo, if it is near enough to be a likely
/// intent (optimal string alignment distance, so `imgae` → `image` is 1).
pub(super) fn closest<'a>(typo: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (typo.chars().count() / 3).max(2);
    candidates
        .iter()
        .map(|c| (osa_distance(typo, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn osa_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_never_copy_text_from_a_file_that_is_not_a_manifest() {
        let secret = "Xq9+very/secret=Zz";
        let texts = [
            format!("root:$6$salt${secret}:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n"),
            format!("{secret}\n"),
            format!("image: x\nroot:$6${secret}: 1\n"),
            format!("image: x\n\"{secret} with spaces\": 1\n"),
            format!("image: x\ncount: \"{secret}\"\n"),
            format!("image: x\npull: \"{secret} x\"\n"),
            format!("image: x\nrestart: {{delay: \"{secret}\"}}\n"),
            format!("image: x\nenv: {{A: [\"{secret}\"]}}\n"),
            format!("image: x\nlabels:\n  \"{secret} k\": 1\n  \"{secret} k\": 2\n"),
            format!("- {secret}\n- b\n"),
            format!("{{\"{secret}\": [\n"),
            format!("image: [\"{secret}\"\n"),
        ];
        let both = texts.iter().flat_map(|text| {
            [
                (text, parse_manifest_file("m.yaml", text)),
                (text, crate::manifest::shape::parse_all("m.yaml", text)),
            ]
        });
        for (text, result) in both {
            let Err(errors) = result else {
                panic!("parsed: {text}");
            };
            for e in errors {
                let shown = e.to_string();
                assert!(!shown.contains("Xq9"), "{text:?}\n→ {shown}");
                assert!(!shown.contains("$6$"), "{text:?}\n→ {shown}");
                assert!(e.line >= 1, "{shown}");
            }
        }
    }

    #[test]
    fn short_plain_words_from_the_file_are_still_named() {
        let err = &parse_manifest_file("m.yaml", "image: x\nimgae: y\n").unwrap_err()[0];
        assert!(err.message.contains("unknown key `imgae`"), "{err}");
        assert!(err.message.contains("did you mean `image`"), "{err}");
        assert_eq!(excerpt("a.b-c_9"), Some("a.b-c_9"));
        assert_eq!(excerpt("has space"), None);
        assert_eq!(excerpt(&"x".repeat(20)), Some("xxxxxxxxxxxxxxxxxxxx"));
        assert_eq!(excerpt(&"x".repeat(21)), None);
        assert_eq!(
            scrub("unknown field `root:$6$x`, expected `image`"),
            "unknown field `(text not shown)`, expected `image`"
        );
        assert_eq!(
            scrub("string \"a\\\"b c\" left"),
            "string \"(text not shown)\" left"
        );
    }
    use crate::manifest::EnvValue;

    /// What berth reports: the typed pass and, when it fails, the shape check.
    fn parse(text: &str) -> Result<Vec<ParsedTask>, Vec<ManifestError>> {
        crate::manifest::shape::parse_all("web.yaml", text)
    }

    fn one_error(text: &str) -> ManifestError {
        match parse(text) {
            Ok(tasks) => panic!("expected an error, parsed {} task(s)", tasks.len()),
            Err(mut errors) => {
                assert_eq!(errors.len(), 1, "{errors:?}");
                errors.remove(0)
            }
        }
    }

    #[test]
    fn a_yaml_syntax_error_is_reported_with_file_line_and_column() {
        let err = one_error("image: nginx\nlabels:\n  a: b: c\n");
        assert_eq!((err.file.as_str(), err.line), ("web.yaml", 3));
        assert!(err.column > 0, "{err}");
        assert!(err.to_string().starts_with("web.yaml:3:"), "{err}");
        assert!(
            !err.message.contains("at line"),
            "location printed twice: {err}"
        );
    }

    #[test]
    fn an_unknown_key_is_located_and_the_closest_valid_key_suggested() {
        let err = one_error("image: nginx\nimgae: nginx\n");
        assert_eq!((err.line, err.column), (2, 1));
        assert_eq!(err.message, "unknown key (did you mean `image`?)");
        let err = one_error("image: nginx\nzzzzzz: 1\n");
        assert!(
            err.message
                .starts_with("unknown key; valid keys here: args, auth, command"),
            "{err}"
        );
    }

    #[test]
    fn an_unknown_nested_key_names_its_parent() {
        let err = one_error("image: nginx\nports:\n  http:\n    statik: 80\n");
        assert_eq!((err.line, err.column), (4, 5));
        assert_eq!(
            err.message,
            "`ports.http`: unknown key (did you mean `static`?)"
        );
    }

    #[test]
    fn a_bad_duration_names_the_field_and_shows_accepted_forms() {
        let err = one_error("image: nginx\nrestart:\n  delay: 10\n");
        assert_eq!((err.line, err.column), (3, 10));
        assert_eq!(
            err.message,
            "`restart.delay`: expected a duration such as 500ms, 10s, 5m, 1h or 1m30s"
        );
    }

    #[test]
    fn a_wrong_type_names_the_field_in_plain_words() {
        let err = one_error("image: nginx\ncount: [1]\n");
        assert_eq!((err.line, err.column), (2, 8));
        assert_eq!(
            err.message,
            "`count`: expected a whole number from 0 to 4294967295"
        );
        let err = one_error("image: [nginx]\n");
        assert_eq!(
            err.message,
            "`image`: expected a single value, not a list or a mapping"
        );
        let err = one_error("image: nginx\nports:\n  http: {static: 70000}\n");
        assert_eq!(
            err.message,
            "`ports.http.static`: expected a whole number from 0 to 65535"
        );
    }

    #[test]
    fn a_document_that_is_not_a_mapping_says_what_a_manifest_is() {
        let err = one_error("- nginx\n");
        assert!(
            err.message
                .starts_with("a manifest document must be a mapping"),
            "{err}"
        );
    }

    #[test]
    fn a_duplicate_key_is_named() {
        let err = one_error("image: a\nimage: b\n");
        assert_eq!(
            (err.line, err.message.as_str()),
            (2, "key `image` appears twice in the same mapping")
        );
    }

    #[test]
    fn a_fractional_env_number_must_be_quoted() {
        let err = one_error("image: a\nenv:\n  VERSION: 1.10\n");
        assert!(
            err.message.starts_with("`env.VERSION`:") && err.message.contains("quote it"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_image_is_an_error() {
        let err = one_error("name: web\n");
        assert!(err.message.contains("image"), "{err}");
        let both = parse("name: web\nimgae: nginx\n").unwrap_err();
        let messages: Vec<&str> = both.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "missing required key `image`",
                "unknown key (did you mean `image`?)"
            ]
        );
    }

    #[test]
    fn several_documents_each_become_a_task_with_their_start_line() {
        let text = "# comment\nname: a\nimage: x\n---\n---\n\nname: b\nimage: y\n";
        let tasks = parse(text).unwrap_or_else(|e| panic!("{e:?}"));
        let got: Vec<_> = tasks
            .iter()
            .map(|t| (t.manifest.name.clone().unwrap_or_default(), t.line))
            .collect();
        assert_eq!(got, vec![("a".to_string(), 2), ("b".to_string(), 7)]);
    }

    #[test]
    fn an_empty_file_has_no_tasks() {
        assert_eq!(parse("").map(|t| t.len()), Ok(0));
        assert_eq!(parse("# only a comment\n---\n").map(|t| t.len()), Ok(0));
    }

    #[test]
    fn numeric_and_boolean_env_and_label_values_are_taken_as_strings() {
        let text = "image: x\nenv:\n  PORT: 8080\n  DEBUG: true\n  NAME: web\nlabels:\n  port: 8080\n  on: false\n";
        let tasks = parse(text).unwrap_or_else(|e| panic!("{e:?}"));
        let m = &tasks[0].manifest;
        assert_eq!(m.env["PORT"], EnvValue::Plain("8080".into()));
        assert_eq!(m.env["DEBUG"], EnvValue::Plain("true".into()));
        assert_eq!(m.env["NAME"], EnvValue::Plain("web".into()));
        assert_eq!(m.labels["port"], "8080");
        assert_eq!(m.labels["on"], "false");
    }

    #[test]
    fn an_env_value_of_the_wrong_shape_gets_a_readable_error() {
        let err = one_error("image: x\nenv:\n  A: [1, 2]\n");
        assert_eq!((err.line, err.column), (3, 6));
        assert!(err.message.starts_with("`env.A`:"), "{err}");
        assert!(!err.message.contains("untagged"), "{err}");
        assert!(err.message.contains("{file: ...}"), "{err}");
    }

    #[test]
    fn an_env_value_read_from_a_file_parses() {
        let tasks = parse("image: x\nenv:\n  DB: {file: /run/secrets/db, secret: true}\n")
            .unwrap_or_else(|e| panic!("{e:?}"));
        match &tasks[0].manifest.env["DB"] {
            EnvValue::From(src) => {
                assert_eq!(src.file.as_deref(), Some("/run/secrets/db"));
                assert_eq!(src.secret, Some(true));
            }
            other => panic!("expected a file source, got {other:?}"),
        }
    }

    #[test]
    fn an_alias_bomb_is_rejected_quickly() {
        let bomb = "image: x\nargs: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n\
            labels:\n\
            \x20 b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n\
            \x20 c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n\
            \x20 d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n\
            \x20 e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n\
            \x20 f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\n\
            \x20 g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n\
            \x20 h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\n\
            \x20 i: [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n";
        let started = std::time::Instant::now();
        let result = parse(bomb);
        let message = result
            .err()
            .map(|e| e[0].message.clone())
            .unwrap_or_default();
        assert!(message.contains("exceeds berth's limits"), "{message}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn deep_nesting_is_rejected() {
        let deep = format!("image: x\nlabels: {}{}\n", "[".repeat(200), "]".repeat(200));
        let err = one_error(&deep);
        assert_eq!(err.line, 2);
        assert!(err.message.contains("nest deeper than 24"), "{err}");
    }

    #[test]
    fn a_file_over_the_size_cap_is_rejected_without_parsing() {
        let big = format!("image: x\n#{}\n", "x".repeat(MAX_FILE_BYTES as usize));
        let err = one_error(&big);
        assert!(err.message.contains("limit"), "{err}");
    }

    #[test]
    fn binary_junk_is_an_error_not_a_panic() {
        let junk: String = (0u8..=255).cycle().take(4096).map(char::from).collect();
        assert!(parse(&junk).is_err());
        assert!(parse("\u{0}\u{1}\u{2}: [\n\t{{{").is_err());
    }

    #[test]
    fn key_and_value_locations_point_into_the_document() {
        let tasks = parse("---\nname: web\nimage: x\nports:\n  http: {static: 80}\nargs: [a, b]\n")
            .unwrap_or_else(|e| panic!("{e:?}"));
        let loc = &tasks[0].locations;
        let at = |line, column| Pos { line, column };
        assert_eq!(loc.key(&[Seg::Key("ports"), Seg::Key("http")]), at(5, 3));
        assert_eq!(
            loc.value(&[Seg::Key("ports"), Seg::Key("http"), Seg::Key("static")]),
            at(5, 18)
        );
        assert_eq!(loc.key(&[Seg::Key("args"), Seg::Index(1)]), at(6, 11));
        // A missing node falls back to its nearest ancestor.
        assert_eq!(loc.key(&[Seg::Key("ports"), Seg::Key("nope")]), at(4, 1));
    }

    #[test]
    fn closest_key_prefers_transpositions_and_ignores_far_words() {
        assert_eq!(closest("imgae", &["name", "image"]), Some("image"));
        assert_eq!(closest("zzzzzz", &["name", "image"]), None);
    }
}
