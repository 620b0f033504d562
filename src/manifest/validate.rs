//! The rules a parsed manifest must follow beyond its YAML shape, and the
//! agent's permissions (privileged modes, host bind mounts, networks).
//!
//! Every error points at the offending key via the document's
//! [`DocLocations`], so `berth validate` output can be followed in an editor.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::files::{FilePolicy, FileText};
use super::interpolate::{self, InterpolateError};
use super::parse::{DocLocations, ManifestError, ParsedTask, Pos, Seg};
use super::select;
use super::{is_valid_name, EnvValue, TaskKind, TaskManifest};

/// Most instances one task may ask for. Far above any single host's needs;
/// it exists so a typo (`count: 10000`) cannot launch a container storm.
pub const MAX_COUNT: u32 = 1000;

/// The default of the agent key `max_instances`: the most instances a whole
/// folder may ask for.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// What the agent allows, and what it knows, when checking a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationContext {
    /// `privileged: true` and `ipc_mode/pid_mode/uts_mode: host`.
    pub allow_privileged: bool,
    /// Bind mounts of host paths in `volumes`.
    pub allow_host_volumes: bool,
    /// The agent's `meta`, for `${meta.KEY}`.
    pub meta: BTreeMap<String, String>,
    /// The most instances the whole folder may ask for (`max_instances`).
    pub max_instances: u32,
    /// The agent's namespace: named volumes `<namespace>-*` and
    /// `container:<namespace>-<task>-<index>` modes belong to it.
    pub namespace: String,
    /// `docker.volumes.allowed`: host path prefixes and volume names; when
    /// set, nothing else is allowed (the namespace's own volumes aside).
    pub allowed_volumes: Option<Vec<String>>,
    /// `docker.networks.allowed`: the networks `network_mode` may name
    /// besides `bridge`, `none`, `default` and the namespace's own
    /// (`<namespace>-*`). `None` checks no network name (only for a task
    /// this agent is not selected for); the agent always gives a list.
    pub allowed_networks: Option<Vec<String>>,
    /// What `env {file:}` and `auth.password_file` may read.
    pub files: FilePolicy,
}

impl Default for ValidationContext {
    /// The agent config's defaults: no privileged containers, host volumes allowed.
    fn default() -> Self {
        ValidationContext {
            allow_privileged: false,
            allow_host_volumes: true,
            meta: BTreeMap::new(),
            max_instances: DEFAULT_MAX_INSTANCES,
            namespace: "berth".into(),
            allowed_volumes: None,
            allowed_networks: Some(Vec::new()),
            files: FilePolicy::default(),
        }
    }
}

/// A task that passed parsing and validation, with its final name.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedTask {
    pub name: String,
    /// 1-based line where the task's document starts.
    pub line: u64,
    pub manifest: TaskManifest,
    /// Why the task's `select:` excludes this agent; `None`: it runs here.
    pub not_selected: Option<String>,
    /// The files the task reads, with where the manifest names them.
    pub file_refs: Vec<FileRef>,
    /// Their text by [`FileRef::field`], once the folder loader has read
    /// them (checking a file's text alone reads nothing).
    pub files: BTreeMap<String, FileText>,
    /// Where each `depends_on` entry sits, for errors the folder finds
    /// (an unknown task, a cycle across files).
    pub depends_at: BTreeMap<String, Pos>,
}

/// A file a manifest asks berth to read: `env.<KEY>` (`{file:}`) or
/// `auth.password_file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRef {
    /// `env.DB_PASSWORD` or `auth.password_file`: the key errors name and
    /// the resolver looks the text up by.
    pub field: String,
    /// The path as written (relative paths are relative to the manifest's folder).
    pub written: String,
    /// Where the path is written in the file.
    pub pos: Pos,
}

/// Every file `doc` asks to read.
fn file_refs(doc: &ParsedTask) -> Vec<FileRef> {
    let m = &doc.manifest;
    let mut refs = Vec::new();
    for (key, value) in &m.env {
        if let EnvValue::From(source) = value {
            if let (Some(file), None) = (&source.file, &source.value) {
                refs.push(FileRef {
                    field: format!("env.{key}"),
                    written: file.clone(),
                    pos: doc
                        .locations
                        .value(&[Seg::Key("env"), Seg::Key(key), Seg::Key("file")]),
                });
            }
        }
    }
    if let Some(file) = m.auth.as_ref().and_then(|a| a.password_file.as_ref()) {
        refs.push(FileRef {
            field: "auth.password_file".into(),
            written: file.clone(),
            pos: doc
                .locations
                .value(&[Seg::Key("auth"), Seg::Key("password_file")]),
        });
    }
    refs
}

/// Parse, name and validate every task of one file. All-or-nothing: any
/// error in any document rejects the whole file.
///
/// `display_path` is what errors show and what the default name's stem is
/// taken from (a single-document file without `name:` is named after it).
pub fn check_file(
    display_path: &str,
    text: &str,
    ctx: &ValidationContext,
) -> Result<Vec<CheckedTask>, Vec<ManifestError>> {
    check_file_on(display_path, text, ctx, &crate::node::this_hostname())
}

/// [`check_file`] for the agent on host `hostname`, which decides `select:`.
///
/// A task that is not selected here still gets every check of its shape,
/// but none that depend on this agent (its `meta` keys in `${meta.KEY}`,
/// its privileged/volume permissions): a fleet repository must not fail on
/// the hosts a task is not meant for.
pub fn check_file_on(
    display_path: &str,
    text: &str,
    ctx: &ValidationContext,
    hostname: &str,
) -> Result<Vec<CheckedTask>, Vec<ManifestError>> {
    let docs = super::shape::parse_all(display_path, text)?;
    check_parsed_on(display_path, text, docs, ctx, hostname)
}

/// [`check_file_on`] for documents already parsed from `text` by
/// [`parse_all`](super::shape::parse_all): everything but the parse, which
/// depends on the text alone. Every rule that looks at this agent or at the
/// host (its config, its meta, the host paths a volume names) runs here.
pub fn check_parsed_on(
    display_path: &str,
    text: &str,
    docs: Vec<ParsedTask>,
    ctx: &ValidationContext,
    hostname: &str,
) -> Result<Vec<CheckedTask>, Vec<ManifestError>> {
    if docs.is_empty() {
        // What a crashed editor or a full disk leaves: never "no tasks",
        // which would remove the file's running containers.
        return Err(vec![ManifestError::new(
            display_path,
            Pos { line: 1, column: 1 },
            "defines no task (the file is empty, or only comments or `---`); \
             its tasks keep running as they were. To remove them, delete the file",
        )]);
    }
    let single = docs.len() == 1;
    let mut errors = Vec::new();
    let mut tasks = Vec::new();
    let mut seen: BTreeMap<String, u64> = BTreeMap::new();
    for doc in docs {
        let name = match task_name(&doc, display_path, single) {
            Ok(name) => name,
            Err(e) => {
                errors.push(e);
                // Still run the other rules: one pass should show every problem.
                String::from("task")
            }
        };
        let not_selected = select::unmet(&doc.manifest.select, &ctx.meta, hostname);
        errors.extend(validate_with(
            &doc,
            display_path,
            text,
            ctx,
            not_selected.is_none(),
        ));
        if let Some(first_line) = seen.insert(name.clone(), doc.line) {
            errors.push(ManifestError::new(
                display_path,
                doc.locations.key(&[Seg::Key("name")]),
                format!("task `{shown_name}` is defined twice in this file (first at line {first_line})", shown_name = shown(&name)),
            ));
        }
        let depends_at = doc
            .manifest
            .depends_on
            .keys()
            .map(|dep| {
                (
                    dep.clone(),
                    doc.locations.key(&[Seg::Key("depends_on"), Seg::Key(dep)]),
                )
            })
            .collect();
        tasks.push(CheckedTask {
            name,
            line: doc.line,
            file_refs: file_refs(&doc),
            files: BTreeMap::new(),
            manifest: doc.manifest,
            not_selected,
            depends_at,
        });
    }
    if errors.is_empty() {
        Ok(tasks)
    } else {
        Err(super::shape::in_order(errors))
    }
}

/// The task's name: `name:` if given, else (single-document files only) the file stem.
fn task_name(doc: &ParsedTask, file: &str, single: bool) -> Result<String, ManifestError> {
    let rule = "use lowercase letters, digits and `-` (not first or last), at most 48 characters";
    match &doc.manifest.name {
        Some(name) if is_valid_name(name) => Ok(name.clone()),
        Some(name) => Err(ManifestError::new(
            file,
            doc.locations.value(&[Seg::Key("name")]),
            format!(
                "task name `{shown_name}` is invalid: {rule}",
                shown_name = shown(name)
            ),
        )),
        None if !single => Err(ManifestError::new(
            file,
            doc.locations.start(),
            "this document has no `name:`; in a file with several documents every task needs one",
        )),
        None => {
            let stem = Path::new(file)
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            if is_valid_name(stem) {
                Ok(stem.to_string())
            } else {
                Err(ManifestError::new(
                    file,
                    doc.locations.start(),
                    format!(
                        "the task name defaults to the file name `{shown_stem}`, which is not a valid task name ({rule}); add `name:`", shown_stem = shown(stem)),
                ))
            }
        }
    }
}

/// Check one parsed task. `text` is the whole file, used to point
/// interpolation errors at the exact `${`.
pub fn validate(
    task: &ParsedTask,
    file: &str,
    text: &str,
    ctx: &ValidationContext,
) -> Vec<ManifestError> {
    validate_with(task, file, text, ctx, true)
}

/// `for_this_agent: false` skips the checks that depend on the agent
/// (meta references, permissions), for tasks not selected here.
fn validate_with(
    task: &ParsedTask,
    file: &str,
    text: &str,
    ctx: &ValidationContext,
    for_this_agent: bool,
) -> Vec<ManifestError> {
    let relaxed;
    let ctx = if for_this_agent {
        ctx
    } else {
        relaxed = ValidationContext {
            allow_privileged: true,
            allow_host_volumes: true,
            allowed_volumes: None,
            allowed_networks: None,
            ..ctx.clone()
        };
        &relaxed
    };
    let mut c = Checker {
        file,
        text,
        loc: &task.locations,
        errors: Vec::new(),
    };
    let m = &task.manifest;
    check_image(&mut c, m);
    if m.count > MAX_COUNT {
        c.at_value(
            &[Seg::Key("count")],
            format!(
                "count {} is above the limit of {MAX_COUNT} instances per task",
                m.count
            ),
        );
    }
    check_ports(&mut c, m);
    check_env_and_labels(&mut c, m);
    check_modes(&mut c, m, ctx);
    check_volumes(&mut c, m, ctx);
    check_misc(&mut c, m);
    check_jobs(&mut c, m, task_self_name(task, file));
    check_select(&mut c, m);
    check_references(&mut c, m, ctx, for_this_agent);
    c.errors
}

/// The name a task will carry, as far as one document tells (for the
/// self-dependency rule; the file stem when `name:` is missing).
fn task_self_name(task: &ParsedTask, file: &str) -> String {
    task.manifest.name.clone().unwrap_or_else(|| {
        Path::new(file)
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string()
    })
}

/// `kind`, `schedule`, `max_attempts` and the shape of `depends_on`. Names
/// a dependency must match and cycles are the folder's to check: they span
/// files.
fn check_jobs(c: &mut Checker<'_>, m: &TaskManifest, name: String) {
    let job = m.kind == TaskKind::Job;
    if let Some(schedule) = &m.schedule {
        if !job {
            c.at_key(
                &[Seg::Key("schedule")],
                "`schedule` is for jobs only: add `kind: job` (a service keeps running and has nothing to schedule)",
            );
        } else if let Err(why) = crate::manifest::cron::Schedule::parse(schedule) {
            c.at_value(
                &[Seg::Key("schedule")],
                format!("schedule `{shown_schedule}` is not a cron schedule: {why}; write 5 fields (minute hour day-of-month month day-of-week, e.g. \"*/15 * * * *\") or 6 with seconds first", shown_schedule = shown(schedule)),
            );
        }
    }
    if let Some(attempts) = m.max_attempts {
        if !job {
            c.at_key(
                &[Seg::Key("max_attempts")],
                "`max_attempts` is for jobs only: add `kind: job`, or use `restart:` for a service",
            );
        } else if attempts == 0 {
            c.at_value(
                &[Seg::Key("max_attempts")],
                "max_attempts must be at least 1 (the first run counts as one attempt)",
            );
        }
    }
    if job && m.count > 1 {
        c.at_value(
            &[Seg::Key("count")],
            format!("a job runs one container, not {}: split parallel work into several jobs, or use count: 1", m.count),
        );
    }
    let static_port = m
        .ports
        .iter()
        .find_map(|(label, spec)| spec.r#static.map(|p| (label, p)));
    if let (crate::manifest::UpdateOrder::StartFirst, Some((label, port))) =
        (m.update.order, static_port)
    {
        c.at_value(
            &[Seg::Key("update"), Seg::Key("order")],
            format!("`order: start-first` runs the new container beside the old one, which cannot both bind the static port {port} (`{shown_label}`); use a dynamic port (`{shown_label}: {{}}`) or `order: stop-first`", shown_label = shown(label)),
        );
    }
    if job && m.update.order == crate::manifest::UpdateOrder::StartFirst {
        c.at_value(
            &[Seg::Key("update"), Seg::Key("order")],
            "a job is never updated in place: a changed spec runs it again, so `order: start-first` has no meaning here; remove it",
        );
    }
    for dep in m.depends_on.keys() {
        let path = [Seg::Key("depends_on"), Seg::Key(dep)];
        if !is_valid_name(dep) {
            c.at_key(
                &path,
                format!(
                    "depends_on names `{shown_dep}`, which is not a valid task name",
                    shown_dep = shown(dep)
                ),
            );
        } else if *dep == name {
            c.at_key(
                &path,
                format!(
                    "task `{shown_name}` depends on itself; remove this entry",
                    shown_name = shown(&name)
                ),
            );
        }
    }
}

fn check_select(c: &mut Checker<'_>, m: &TaskManifest) {
    for (key, value) in &m.select {
        let path = [Seg::Key("select"), Seg::Key(key)];
        if let Some(message) = select::check_key(key) {
            c.at_key(&path, message);
        } else if value.is_empty() {
            c.at_value(
                &path,
                format!("select `{shown_key}` is empty; write the value to match, e.g. `{shown_key}: gateway`", shown_key = shown(key)),
            );
        }
    }
}

/// The longest excerpt of a manifest value an error shows.
pub const MAX_EXCERPT: usize = 40;

/// A manifest value as an error shows it: at most [`MAX_EXCERPT`]
/// characters, cut with `…`, escaped (control characters, quotes,
/// backslashes and backticks), so a message is one line and a value cannot
/// end its own quotes. Errors show only values of fields whose type carries
/// no secret (image, volume, the network and namespace modes, DNS servers,
/// schedules, names and keys); never an env or label value, a command, its
/// arguments, a healthcheck test or a credential.
pub fn shown(value: &str) -> String {
    let mut out = String::new();
    for (i, ch) in value.chars().enumerate() {
        if i == MAX_EXCERPT {
            out.push('…');
            break;
        }
        match ch {
            '`' => out.push_str("\\`"),
            ch => out.extend(ch.escape_debug()),
        }
    }
    out
}

struct Checker<'a> {
    file: &'a str,
    text: &'a str,
    loc: &'a DocLocations,
    errors: Vec<ManifestError>,
}

impl Checker<'_> {
    fn at_key(&mut self, path: &[Seg<'_>], message: impl Into<String>) {
        let pos = self.loc.key(path);
        self.errors
            .push(ManifestError::new(self.file, pos, message));
    }

    fn at_value(&mut self, path: &[Seg<'_>], message: impl Into<String>) {
        let pos = self.loc.value(path);
        self.errors
            .push(ManifestError::new(self.file, pos, message));
    }

    /// Point at `needle` in the text at or after the value at `path`; YAML
    /// gives us the scalar's start, the `${` may be further along (or on a
    /// later line of a block scalar).
    fn at_text(&mut self, path: &[Seg<'_>], needle: &str, message: impl Into<String>) {
        let from = self.loc.value(path);
        let pos = find_after(self.text, from, needle).unwrap_or(from);
        self.errors
            .push(ManifestError::new(self.file, pos, message));
    }
}

/// The position of the first `needle` at or after `from` that is not escaped
/// with a leading `$`.
fn find_after(text: &str, from: Pos, needle: &str) -> Option<Pos> {
    let line_start: usize = text
        .split_inclusive('\n')
        .take(usize::try_from(from.line.checked_sub(1)?).ok()?)
        .map(str::len)
        .sum();
    let column_bytes: usize = text[line_start..]
        .chars()
        .take(usize::try_from(from.column.saturating_sub(1)).ok()?)
        .map(char::len_utf8)
        .sum();
    let start = line_start + column_bytes;
    let mut search = start;
    loop {
        let found = search + text.get(search..)?.find(needle)?;
        if found > 0 && text.as_bytes()[found - 1] == b'$' {
            search = found + needle.len();
            continue;
        }
        let before = &text[..found];
        let line = before.matches('\n').count() as u64 + 1;
        let line_begin = before.rfind('\n').map_or(0, |i| i + 1);
        let column = text[line_begin..found].chars().count() as u64 + 1;
        return Some(Pos { line, column });
    }
}

fn check_image(c: &mut Checker<'_>, m: &TaskManifest) {
    let image = m.image.as_str();
    let path = [Seg::Key("image")];
    if image.trim().is_empty() {
        c.at_value(&path, "image is empty; write e.g. `image: nginx:1.27`");
    } else if image
        .chars()
        .any(|ch| ch.is_whitespace() || ch.is_control())
    {
        c.at_value(
            &path,
            format!(
                "image `{shown_image}` contains whitespace",
                shown_image = shown(image)
            ),
        );
    } else if image.starts_with(['-', ':', '@', '/']) || image.ends_with([':', '@', '/']) {
        c.at_value(
            &path,
            format!("image `{shown_image}` is not an image reference; write e.g. `nginx:1.27` or `registry.example.com/app@sha256:...`", shown_image = shown(image)),
        );
    } else if let Some((_, digest)) = image.split_once('@') {
        let ok = digest.split_once(':').is_some_and(|(algo, hex)| {
            !algo.is_empty() && !hex.is_empty() && hex.chars().all(|ch| ch.is_ascii_hexdigit())
        });
        if !ok {
            c.at_value(
                &path,
                format!(
                    "image `{shown_image}` has a malformed digest; write `@sha256:<64 hex digits>`",
                    shown_image = shown(image)
                ),
            );
        }
    }
}

fn is_port_label(label: &str) -> bool {
    !label.is_empty()
        && label
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn check_ports(c: &mut Checker<'_>, m: &TaskManifest) {
    for (label, spec) in &m.ports {
        if !is_port_label(label) {
            c.at_key(
                &[Seg::Key("ports"), Seg::Key(label)],
                format!("port label `{shown_label}` is invalid: use letters, digits and `_` (it becomes part of BERTH_PORT_{shown_label})", shown_label = shown(label)),
            );
        }
        if let Some(port) = spec.r#static {
            let path = [Seg::Key("ports"), Seg::Key(label), Seg::Key("static")];
            if port == 0 {
                c.at_value(
                    &path,
                    "static port 0 is invalid: use 1..=65535, or `{}` for a dynamic port",
                );
            } else if m.count > 1 {
                c.at_value(
                    &path,
                    format!("static port {port} cannot be bound by {} instances on one host; use a dynamic port (`{}: {{}}`) or count: 1", m.count, shown(label)),
                );
            }
        }
    }
    for (label, port) in &m.port_map {
        if !m.ports.contains_key(label) {
            let declared: Vec<&str> = m.ports.keys().map(String::as_str).collect();
            let known = if declared.is_empty() {
                "no port labels are declared".to_string()
            } else {
                format!(
                    "declared: {}",
                    declared
                        .iter()
                        .map(|d| shown(d))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            c.at_key(
                &[Seg::Key("port_map"), Seg::Key(label)],
                format!(
                    "port_map names `{shown_label}`, which is not a port label under `ports:` ({known})", shown_label = shown(label)),
            );
        }
        if *port == 0 {
            c.at_value(
                &[Seg::Key("port_map"), Seg::Key(label)],
                "container port 0 is invalid: use 1..=65535",
            );
        }
    }
}

fn is_env_key(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|ch| ch.is_ascii_alphabetic() || ch == '_')
        && chars.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

fn check_env_and_labels(c: &mut Checker<'_>, m: &TaskManifest) {
    for (key, value) in &m.env {
        let path = [Seg::Key("env"), Seg::Key(key)];
        if !is_env_key(key) {
            c.at_key(
                &path,
                format!("env name `{shown_key}` is invalid: use letters, digits and `_`, not starting with a digit", shown_key = shown(key)),
            );
        } else if key.starts_with("BERTH_") {
            c.at_key(
                &path,
                format!(
                    "env name `{shown_key}` is reserved: berth sets BERTH_* variables itself",
                    shown_key = shown(key)
                ),
            );
        }
        if let EnvValue::From(source) = value {
            match (&source.file, &source.value) {
                (Some(_), Some(_)) => c.at_key(
                    &path,
                    format!("env `{shown_key}` sets both `file` and `value`; keep exactly one", shown_key = shown(key)),
                ),
                (None, None) => c.at_key(
                    &path,
                    format!("env `{shown_key}` needs `file: /path` or `value: ...`", shown_key = shown(key)),
                ),
                (Some(file), None) if file.is_empty() => c.at_value(
                    &[Seg::Key("env"), Seg::Key(key), Seg::Key("file")],
                    format!("env `{shown_key}`: `file` is empty; write a path (relative to the manifest's folder, or absolute)", shown_key = shown(key)),
                ),
                _ => {}
            }
        }
    }
    for key in m.labels.keys() {
        let path = [Seg::Key("labels"), Seg::Key(key)];
        if key.is_empty() {
            c.at_key(&path, "a label key is empty");
        } else if key.starts_with(crate::names::labels::PREFIX) {
            c.at_key(
                &path,
                format!(
                    "label `{shown_key}` is reserved: berth owns every io.berth.* label",
                    shown_key = shown(key)
                ),
            );
        }
    }
}

/// A Docker network name as `network_mode` and `docker.networks.allowed`
/// take it: letters, digits, `_`, `.` and `-`, not starting with `_`, `.`
/// or `-`.
pub fn is_network_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
        && !name.starts_with(['.', '-', '_'])
}

/// Whether a container may join the Docker network `name` (not `host`,
/// which is a privileged mode): `bridge`, `none` and `default` always, the
/// namespace's own networks (`<namespace>-*`, like its volumes) always,
/// any other only when `docker.networks.allowed` lists it exactly.
pub(crate) fn network_allowed(name: &str, ctx: &ValidationContext) -> bool {
    matches!(name, "bridge" | "none" | "default")
        || name
            .strip_prefix(ctx.namespace.as_str())
            .is_some_and(|rest| rest.starts_with('-'))
        || ctx
            .allowed_networks
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|n| n == name))
}

fn is_container_ref(mode: &str) -> bool {
    mode.strip_prefix("container:")
        .is_some_and(|name| !name.is_empty())
}

const REFUSED: &str = "the agent does not allow privileged containers; set docker.privileged.enabled: true in the agent config";

/// `container:<name>` joins another container's namespace. Without the
/// privileged permission, only a container of this namespace may be named
/// (`<namespace>-<task>-<index>`: one berth makes), never someone else's.
fn check_container_ref(c: &mut Checker<'_>, key: &str, mode: &str, ctx: &ValidationContext) {
    let Some(name) = mode.strip_prefix("container:") else {
        return;
    };
    if ctx.allow_privileged || crate::names::parse_container_name(name, &ctx.namespace).is_some() {
        return;
    }
    c.at_value(
        &[Seg::Key(key)],
        format!(
            "`{key}: container:<name>` may only name a container of this namespace \
             (`{ns}-<task>-<index>`, e.g. `{ns}-web-0`); joining another container needs \
             docker.privileged.enabled: true in the agent config",
            ns = ctx.namespace
        ),
    );
}

fn check_modes(c: &mut Checker<'_>, m: &TaskManifest, ctx: &ValidationContext) {
    if m.privileged && !ctx.allow_privileged {
        c.at_key(
            &[Seg::Key("privileged")],
            format!("`privileged: true` is refused: {REFUSED}"),
        );
    }
    if let Some(mode) = &m.network_mode {
        let path = [Seg::Key("network_mode")];
        let named = is_network_name(mode);
        if !(named || is_container_ref(mode)) {
            c.at_value(
                &path,
                format!("network_mode `{shown_mode}` is invalid: use bridge, host, none, container:<name> or a network name", shown_mode = shown(mode)),
            );
        } else if mode == "host" {
            if !ctx.allow_privileged {
                c.at_key(&path, format!("`network_mode: host` is refused: {REFUSED}"));
            }
            if let Some(label) = m.port_map.keys().next() {
                c.at_key(
                    &[Seg::Key("port_map"), Seg::Key(label)],
                    "port_map has no effect with `network_mode: host` (the container listens on the host port itself); remove port_map and read the port from BERTH_PORT_<label>",
                );
            }
        } else if is_container_ref(mode) {
            check_container_ref(c, "network_mode", mode, ctx);
            if let Some(label) = m.ports.keys().next() {
                c.at_key(
                    &[Seg::Key("ports"), Seg::Key(label)],
                    "a task with `network_mode: container:<name>` shares that container's network and cannot publish ports; declare the ports on the container it joins",
                );
            }
        } else if !network_allowed(mode, ctx) {
            c.at_key(
                &path,
                format!(
                    "`network_mode: {shown_mode}` is refused: the agent allows only bridge, none, default, this namespace's networks (`{ns}-<name>`) and those in docker.networks.allowed; to allow it, add it in the agent config: `docker: {{networks: {{allowed: [{shown_mode}]}}}}`",
                    shown_mode = shown(mode),
                    ns = ctx.namespace
                ),
            );
        }
    }
    let modes: [(&str, &Option<String>, &[&str]); 3] = [
        (
            "ipc_mode",
            &m.ipc_mode,
            &["host", "private", "shareable", "none"],
        ),
        ("pid_mode", &m.pid_mode, &["host"]),
        ("uts_mode", &m.uts_mode, &["host"]),
    ];
    for (key, value, allowed) in modes {
        let Some(mode) = value else { continue };
        let path = [Seg::Key(key)];
        if !(allowed.contains(&mode.as_str()) || is_container_ref(mode)) {
            c.at_value(
                &path,
                format!(
                    "{key} `{shown_mode}` is invalid: use {} or container:<name>",
                    allowed.join(", "),
                    shown_mode = shown(mode)
                ),
            );
        } else if mode == "host" && !ctx.allow_privileged {
            c.at_key(&path, format!("`{key}: host` is refused: {REFUSED}"));
        } else {
            check_container_ref(c, key, mode, ctx);
        }
    }
}

const VOLUME_OPTIONS: &[&str] = &[
    "ro",
    "rw",
    "z",
    "Z",
    "shared",
    "rshared",
    "slave",
    "rslave",
    "private",
    "rprivate",
    "nocopy",
    "consistent",
    "cached",
    "delegated",
];

/// Whether host path `src` lies inside one of the `docker.volumes.allowed`
/// prefixes, both as written and with symlinks resolved (when it exists):
/// a symlink inside an allowed folder must not lead out of it.
pub(crate) fn host_path_allowed(src: &str, allowed: &[String]) -> bool {
    let inside = |path: &Path| {
        allowed.iter().filter(|a| a.starts_with('/')).any(|prefix| {
            let prefix = Path::new(prefix);
            path.starts_with(prefix)
                || std::fs::canonicalize(prefix).is_ok_and(|real| path.starts_with(real))
        })
    };
    let written = Path::new(src);
    inside(written) && std::fs::canonicalize(written).map_or(true, |real| inside(&real))
}

fn check_volumes(c: &mut Checker<'_>, m: &TaskManifest, ctx: &ValidationContext) {
    const ENABLE: &str = "set docker.volumes.enabled: true in the agent config";
    for (i, volume) in m.volumes.iter().enumerate() {
        let path = [Seg::Key("volumes"), Seg::Index(i)];
        let parts: Vec<&str> = volume.split(':').collect();
        let (src, dst, opts) = match parts.as_slice() {
            [src, dst] => (*src, *dst, None),
            [src, dst, opts] => (*src, *dst, Some(*opts)),
            _ => {
                c.at_key(
                    &path,
                    format!("volume `{shown_volume}` must be SOURCE:TARGET or SOURCE:TARGET:OPTIONS, e.g. /srv/web:/usr/share/nginx/html:ro", shown_volume = shown(volume)),
                );
                continue;
            }
        };
        let own_volume = format!("{}-", ctx.namespace);
        if src.is_empty() {
            c.at_key(
                &path,
                format!(
                    "volume `{shown_volume}` has an empty source",
                    shown_volume = shown(volume)
                ),
            );
        } else if src.starts_with('.') {
            c.at_key(
                &path,
                format!("volume `{shown_volume}`: a host path must be absolute (Docker has no working directory to resolve `{shown_src}` against)", shown_volume = shown(volume), shown_src = shown(src)),
            );
        } else if src.starts_with('/') {
            if !ctx.allow_host_volumes {
                c.at_key(
                    &path,
                    format!("volume `{shown_volume}` is refused: the agent does not allow host bind mounts; use a volume of this namespace (`{own_volume}<name>`) or {ENABLE}", shown_volume = shown(volume)),
                );
            } else if super::files::has_parent_component(Path::new(src)) {
                c.at_key(
                    &path,
                    format!("volume `{shown_volume}`: the host path must not contain `..`; write the path it means", shown_volume = shown(volume)),
                );
            } else if let Some(allowed) = &ctx.allowed_volumes {
                if !host_path_allowed(src, allowed) {
                    c.at_key(
                        &path,
                        format!("volume `{shown_volume}` is refused: `{shown_src}` is not under a host path the agent allows (docker.volumes.allowed)", shown_volume = shown(volume), shown_src = shown(src)),
                    );
                }
            }
        } else if !src
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '.' | '-'))
        {
            c.at_key(
                &path,
                format!(
                    "volume `{shown_volume}`: `{shown_src}` is neither an absolute host path nor a volume name", shown_volume = shown(volume), shown_src = shown(src)),
            );
        } else if !src.starts_with(&own_volume) {
            // Another application's data: only with the owner's consent.
            if !ctx.allow_host_volumes {
                c.at_key(
                    &path,
                    format!("volume `{shown_volume}` is refused: the named volume `{shown_src}` does not belong to this namespace; name it `{own_volume}<name>` or {ENABLE}", shown_volume = shown(volume), shown_src = shown(src)),
                );
            } else if ctx
                .allowed_volumes
                .as_ref()
                .is_some_and(|allowed| !allowed.iter().any(|a| a == src))
            {
                c.at_key(
                    &path,
                    format!("volume `{shown_volume}` is refused: the named volume `{shown_src}` is not in docker.volumes.allowed and does not belong to this namespace (`{own_volume}<name>`)", shown_volume = shown(volume), shown_src = shown(src)),
                );
            }
        }
        if !dst.starts_with('/') {
            c.at_key(
                &path,
                format!("volume `{shown_volume}`: the target `{shown_dst}` must be an absolute path in the container", shown_volume = shown(volume), shown_dst = shown(dst)),
            );
        }
        if let Some(opts) = opts {
            for opt in opts.split(',') {
                if !VOLUME_OPTIONS.contains(&opt) {
                    c.at_key(
                        &path,
                        format!(
                            "volume `{shown_volume}`: unknown option `{shown_opt}` (use {})",
                            VOLUME_OPTIONS.join(", "),
                            shown_volume = shown(volume),
                            shown_opt = shown(opt)
                        ),
                    );
                }
            }
        }
    }
}

fn check_misc(c: &mut Checker<'_>, m: &TaskManifest) {
    if m.restart.delay > m.restart.max_delay {
        c.at_key(
            &[Seg::Key("restart"), Seg::Key("delay")],
            format!(
                "restart.delay ({}) is longer than restart.max_delay ({})",
                m.restart.delay, m.restart.max_delay
            ),
        );
    }
    if let Some(hc) = &m.healthcheck {
        let path = [Seg::Key("healthcheck"), Seg::Key("test")];
        match hc.test.first().map(String::as_str) {
            None => c.at_key(&path, "healthcheck.test is empty; write e.g. [\"CMD\", \"wget\", \"-q\", \"http://127.0.0.1/\"]"),
            Some("CMD") | Some("CMD-SHELL") if hc.test.len() < 2 => c.at_key(
                &path,
                "healthcheck.test names no command after CMD / CMD-SHELL",
            ),
            Some("CMD") | Some("CMD-SHELL") | Some("NONE") => {}
            Some(_) => c.at_value(
                &[Seg::Key("healthcheck"), Seg::Key("test"), Seg::Index(0)],
                "healthcheck.test must start with CMD, CMD-SHELL or NONE (its value is not shown: a test command may carry a secret)",
            ),
        }
    }
    if let Some(auth) = &m.auth {
        if auth.password.is_some() && auth.password_file.is_some() {
            c.at_key(
                &[Seg::Key("auth"), Seg::Key("password")],
                "auth sets both `password` and `password_file`; keep exactly one",
            );
        }
    }
    if let Some(resources) = &m.resources {
        if resources.memory.is_some_and(|mb| mb < 6) {
            c.at_value(
                &[Seg::Key("resources"), Seg::Key("memory")],
                "resources.memory is in MiB and Docker's minimum is 6",
            );
        }
        if resources.cpu == Some(0) {
            c.at_value(
                &[Seg::Key("resources"), Seg::Key("cpu")],
                "resources.cpu must be at least 1 (or left out)",
            );
        }
    }
    for (i, server) in m.dns_servers.iter().enumerate() {
        if server.parse::<std::net::IpAddr>().is_err() {
            c.at_value(
                &[Seg::Key("dns_servers"), Seg::Index(i)],
                format!(
                    "dns server `{shown_server}` is not an IP address",
                    shown_server = shown(server)
                ),
            );
        }
    }
}

/// Every name `${...}` may refer to in this task.
fn known_names(m: &TaskManifest, ctx: &ValidationContext) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = [
        "BERTH_TASK",
        "BERTH_INDEX",
        "BERTH_NAMESPACE",
        "node.hostname",
        "node.ip",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    for label in m.ports.keys() {
        for prefix in ["BERTH_PORT_", "BERTH_HOST_PORT_", "BERTH_ADDR_"] {
            names.insert(format!("{prefix}{label}"));
        }
    }
    if m.resources.is_some() {
        names.insert("BERTH_CPU_LIMIT".into());
        names.insert("BERTH_MEMORY_LIMIT".into());
    }
    names.extend(m.env.keys().cloned());
    names.extend(ctx.meta.keys().map(|k| format!("meta.{k}")));
    names
}

fn check_references(
    c: &mut Checker<'_>,
    m: &TaskManifest,
    ctx: &ValidationContext,
    for_this_agent: bool,
) {
    let known = known_names(m, ctx);
    let mut fields: Vec<(Vec<Seg<'_>>, &str)> = Vec::new();
    if let Some(command) = &m.command {
        fields.push((vec![Seg::Key("command")], command));
    }
    for (i, arg) in m.args.iter().enumerate() {
        fields.push((vec![Seg::Key("args"), Seg::Index(i)], arg));
    }
    for (i, arg) in m.entrypoint.iter().flatten().enumerate() {
        fields.push((vec![Seg::Key("entrypoint"), Seg::Index(i)], arg));
    }
    for (key, value) in &m.env {
        match value {
            EnvValue::Plain(text) => fields.push((vec![Seg::Key("env"), Seg::Key(key)], text)),
            EnvValue::From(source) => {
                if let Some(text) = &source.value {
                    fields.push((
                        vec![Seg::Key("env"), Seg::Key(key), Seg::Key("value")],
                        text,
                    ));
                }
            }
        }
    }
    for (key, value) in &m.labels {
        fields.push((vec![Seg::Key("labels"), Seg::Key(key)], value));
    }
    if let Some(hostname) = &m.hostname {
        fields.push((vec![Seg::Key("hostname")], hostname));
    }
    for (path, text) in fields {
        match interpolate::scan(text) {
            Ok(refs) => {
                let unknown = |name: &str| {
                    !known.contains(name) && (for_this_agent || !name.starts_with("meta."))
                };
                for r in refs.into_iter().filter(|r| unknown(&r.name)) {
                    let hint = unknown_hint(&r.name, m);
                    c.at_text(
                        &path,
                        &format!("${{{}}}", r.name),
                        format!("unknown name `${{{}}}`{hint}", shown(&r.name)),
                    );
                }
            }
            Err(e) => {
                let needle = match &e {
                    InterpolateError::InvalidName { name, .. } => format!("${{{name}}}"),
                    _ => "${".to_string(),
                };
                let message = match &e {
                    // Its text may be part of a secret value: position only.
                    InterpolateError::InvalidName { .. } => "this `${...}` is not a valid reference: names use letters, digits, `_`, `.` and `-` (write `$${` for a literal `${`)".to_string(),
                    other => other.to_string(),
                };
                c.at_text(&path, &needle, message);
            }
        }
    }
}

/// Why a name might be unknown, for the most likely mistakes.
fn unknown_hint(name: &str, m: &TaskManifest) -> String {
    if let Some(key) = name.strip_prefix("meta.") {
        return format!(
            " (the agent config has no meta key `{shown_key}`)",
            shown_key = shown(key)
        );
    }
    for prefix in ["BERTH_PORT_", "BERTH_HOST_PORT_", "BERTH_ADDR_"] {
        if let Some(label) = name.strip_prefix(prefix) {
            return format!(
                " (no port label `{shown_label}` under `ports:`)",
                shown_label = shown(label)
            );
        }
    }
    if matches!(name, "BERTH_CPU_LIMIT" | "BERTH_MEMORY_LIMIT") && m.resources.is_none() {
        return " (it is only set when `resources:` is)".to_string();
    }
    " (known: BERTH_*, the task's env keys, meta.KEY, node.hostname, node.ip; write $${ for a literal ${)".to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        file: &str,
        text: &str,
        ctx: &ValidationContext,
    ) -> Result<Vec<CheckedTask>, Vec<ManifestError>> {
        check_file(file, text, ctx)
    }

    /// The only error for `text` in `web.yaml` under the default context.
    fn only_error(text: &str) -> ManifestError {
        only_error_with(text, &ValidationContext::default())
    }

    fn only_error_with(text: &str, ctx: &ValidationContext) -> ManifestError {
        match check("web.yaml", text, ctx) {
            Ok(tasks) => panic!("expected an error, got {} task(s)", tasks.len()),
            Err(mut errors) => {
                assert_eq!(errors.len(), 1, "{errors:#?}");
                errors.remove(0)
            }
        }
    }

    fn privileged() -> ValidationContext {
        ValidationContext {
            allow_privileged: true,
            ..ValidationContext::default()
        }
    }

    #[test]
    fn a_single_document_without_name_is_named_after_the_file_stem() {
        let tasks = check("web.yaml", "image: nginx\n", &ValidationContext::default())
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(tasks[0].name, "web");
    }

    #[test]
    fn a_file_stem_that_is_not_a_valid_name_asks_for_name() {
        let err = match check(
            "My_App.yaml",
            "image: nginx\n",
            &ValidationContext::default(),
        ) {
            Err(errors) => errors[0].clone(),
            Ok(_) => panic!("My_App is not a valid task name"),
        };
        assert_eq!((err.line, err.column), (1, 1));
        assert!(
            err.message.contains("`My_App`") && err.message.contains("add `name:`"),
            "{err}"
        );
    }

    #[test]
    fn documents_in_a_multi_document_file_need_names() {
        let err = only_error("name: a\nimage: x\n---\nimage: y\n");
        assert_eq!(err.line, 4);
        assert!(err.message.contains("needs one"), "{err}");
    }

    #[test]
    fn an_invalid_task_name_is_located_at_its_value() {
        let err = only_error("name: Web_1\nimage: x\n");
        assert_eq!((err.line, err.column), (1, 7));
        assert!(
            err.message.contains("task name `Web_1` is invalid"),
            "{err}"
        );
    }

    #[test]
    fn a_name_used_twice_in_one_file_is_an_error() {
        let err = only_error("name: a\nimage: x\n---\nname: a\nimage: y\n");
        assert_eq!(err.line, 4);
        assert!(err.message.contains("defined twice"), "{err}");
    }

    #[test]
    fn an_empty_or_malformed_image_is_refused() {
        assert!(only_error("image: \"\"\n")
            .message
            .contains("image is empty"));
        assert!(only_error("image: \"nginx latest\"\n")
            .message
            .contains("whitespace"));
        assert!(only_error("image: nginx@sha256:xyz\n")
            .message
            .contains("digest"));
    }

    #[test]
    fn count_above_the_cap_is_refused() {
        let err = only_error("image: x\ncount: 5000\n");
        assert_eq!((err.line, err.column), (2, 8));
        assert!(err.message.contains("limit of 1000"), "{err}");
    }

    #[test]
    fn port_map_naming_an_undeclared_label_is_refused() {
        let err = only_error("image: x\nports:\n  http: {}\nport_map:\n  htp: 80\n");
        assert_eq!((err.line, err.column), (5, 3));
        assert!(
            err.message.contains("`htp`") && err.message.contains("declared: http"),
            "{err}"
        );
    }

    #[test]
    fn a_port_label_must_be_usable_in_an_env_name() {
        let err = only_error("image: x\nports:\n  my-port: {}\n");
        assert_eq!((err.line, err.column), (3, 3));
        assert!(
            err.message.contains("port label `my-port` is invalid"),
            "{err}"
        );
    }

    #[test]
    fn static_port_zero_and_static_port_with_several_instances_are_refused() {
        assert!(only_error("image: x\nports:\n  a: {static: 0}\n")
            .message
            .contains("static port 0"));
        let err = only_error("image: x\ncount: 2\nports:\n  a: {static: 8080}\n");
        assert_eq!(err.line, 4);
        assert!(err.message.contains("2 instances"), "{err}");
    }

    #[test]
    fn restart_delay_longer_than_max_delay_is_refused() {
        let err = only_error("image: x\nrestart:\n  delay: 10m\n  max_delay: 1m\n");
        assert_eq!((err.line, err.column), (3, 3));
        assert!(
            err.message.contains("longer than restart.max_delay"),
            "{err}"
        );
    }

    #[test]
    fn healthcheck_test_must_start_with_cmd_cmd_shell_or_none() {
        let err = only_error("image: x\nhealthcheck:\n  test: [wget, x]\n");
        assert_eq!((err.line, err.column), (3, 10));
        assert!(err.message.contains("CMD, CMD-SHELL or NONE"), "{err}");
        assert!(only_error("image: x\nhealthcheck:\n  test: []\n")
            .message
            .contains("empty"));
    }

    #[test]
    fn env_names_must_be_valid_and_not_berth_reserved() {
        assert!(only_error("image: x\nenv:\n  1X: a\n")
            .message
            .contains("env name `1X` is invalid"));
        let err = only_error("image: x\nenv:\n  BERTH_TASK: a\n");
        assert_eq!((err.line, err.column), (3, 3));
        assert!(err.message.contains("reserved"), "{err}");
    }

    #[test]
    fn env_source_needs_exactly_one_of_file_and_value() {
        let both = only_error("image: x\nenv:\n  A: {file: /a, value: b}\n");
        assert!(both.message.contains("both `file` and `value`"), "{both}");
        let neither = only_error("image: x\nenv:\n  A: {secret: true}\n");
        assert!(neither.message.contains("needs `file"), "{neither}");
    }

    #[test]
    fn io_berth_labels_are_reserved() {
        let err = only_error("image: x\nlabels:\n  io.berth.task: evil\n");
        assert_eq!((err.line, err.column), (3, 3));
        assert!(err.message.contains("reserved"), "{err}");
    }

    #[test]
    fn auth_with_both_password_and_password_file_is_refused() {
        let err = only_error("image: x\nauth:\n  password: a\n  password_file: /b\n");
        assert!(
            err.message.contains("both `password` and `password_file`"),
            "{err}"
        );
    }

    #[test]
    fn privileged_is_refused_unless_the_agent_allows_it() {
        let text = "image: x\nprivileged: true\n";
        let err = only_error(text);
        assert_eq!((err.line, err.column), (2, 1));
        assert!(
            err.message.contains("refused")
                && err.message.contains("docker.privileged.enabled: true"),
            "{err}"
        );
        assert!(check("web.yaml", text, &privileged()).is_ok());
    }

    #[test]
    fn host_ipc_pid_and_uts_modes_need_the_privileged_permission() {
        for key in ["ipc_mode", "pid_mode", "uts_mode"] {
            let text = format!("image: x\n{key}: host\n");
            let err = only_error(&text);
            assert!(
                err.message.contains(&format!("`{key}: host` is refused")),
                "{err}"
            );
            assert!(check("web.yaml", &text, &privileged()).is_ok(), "{key}");
        }
        assert!(only_error("image: x\npid_mode: bogus\n")
            .message
            .contains("invalid"));
        assert!(check(
            "web.yaml",
            "image: x\nipc_mode: container:berth-db-0\n",
            &ValidationContext::default()
        )
        .is_ok());
    }

    #[test]
    fn network_mode_shapes() {
        for ok in [
            "bridge",
            "none",
            "default",
            "container:berth-db-0",
            "berth-net",
        ] {
            let text = format!("image: x\nnetwork_mode: {ok}\n");
            assert!(
                check("web.yaml", &text, &ValidationContext::default()).is_ok(),
                "{ok}"
            );
        }
        assert!(only_error("image: x\nnetwork_mode: \"container:\"\n")
            .message
            .contains("network_mode"));
        for bad in ["-net", "a b", "net/x", "\"\""] {
            let err = only_error(&format!("image: x\nnetwork_mode: {bad}\n"));
            assert!(err.message.contains("is invalid"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_network_not_of_the_namespace_must_be_listed_in_the_agent_config() {
        // The error names the file, the line, the key and what to add.
        let text = "image: x\ncount: 1\nnetwork_mode: frontend\n";
        let err = only_error(text);
        assert_eq!(
            (err.file.as_str(), err.line, err.column),
            ("web.yaml", 3, 1)
        );
        assert!(
            err.message
                .starts_with("`network_mode: frontend` is refused")
                && err.message.contains("`berth-<name>`")
                && err.message.ends_with(
                    "add it in the agent config: `docker: {networks: {allowed: [frontend]}}`"
                ),
            "{err}"
        );
        let listed = ValidationContext {
            allowed_networks: Some(vec!["backend".into(), "frontend".into()]),
            ..ValidationContext::default()
        };
        assert!(check("web.yaml", text, &listed).is_ok());
        // Listed means exactly that name: no prefix, no other case.
        for other in ["front", "frontend2", "Frontend"] {
            let t = format!("image: x\nnetwork_mode: {other}\n");
            let err = only_error_with(&t, &listed);
            assert!(err.message.contains("is refused"), "{other}: {err}");
        }
        // The namespace's own networks, like its volumes, need no listing;
        // another namespace's do, and privilege does not stand in for it.
        let edge = ValidationContext {
            namespace: "edge".into(),
            allow_privileged: true,
            ..ValidationContext::default()
        };
        assert!(check("web.yaml", "image: x\nnetwork_mode: edge-internal\n", &edge).is_ok());
        for other in ["berth-internal", "edge", "edgeinternal"] {
            let t = format!("image: x\nnetwork_mode: {other}\n");
            let err = only_error_with(&t, &edge);
            assert!(err.message.contains("`edge-<name>`"), "{other}: {err}");
        }
        // `host` stays the privileged gate's, whatever the list says.
        let host_listed = ValidationContext {
            allowed_networks: Some(vec!["host".into()]),
            ..ValidationContext::default()
        };
        let err = only_error_with("image: x\nnetwork_mode: host\n", &host_listed);
        assert!(err.message.contains("docker.privileged.enabled"), "{err}");
    }

    #[test]
    fn a_refused_network_is_shown_only_as_a_short_excerpt() {
        let long = format!("n{}", "x".repeat(80));
        let err = only_error(&format!("image: x\nnetwork_mode: {long}\n"));
        assert!(!err.message.contains(&long), "{err}");
        assert!(err.message.contains(&shown(&long)), "{err}");
        assert!(shown(&long).ends_with('…'));
    }

    #[test]
    fn host_network_needs_the_privileged_permission_and_refuses_port_map() {
        let err = only_error("image: x\nnetwork_mode: host\n");
        assert_eq!((err.line, err.column), (2, 1));
        assert!(
            err.message.contains("`network_mode: host` is refused")
                && err.message.contains("docker.privileged.enabled: true"),
            "{err}"
        );
        assert!(check("web.yaml", "image: x\nnetwork_mode: host\n", &privileged()).is_ok());
        let err = only_error_with(
            "image: x\nnetwork_mode: host\nports: {http: {}}\nport_map: {http: 80}\n",
            &privileged(),
        );
        assert_eq!((err.line, err.column), (4, 12));
        assert!(err.message.contains("port_map has no effect"), "{err}");
    }

    #[test]
    fn container_modes_may_join_only_this_namespace_without_the_privileged_permission() {
        for key in ["network_mode", "pid_mode", "ipc_mode"] {
            let foreign = format!("image: x\n{key}: container:postgres\n");
            let err = only_error(&foreign);
            assert_eq!((err.line, err.column), (2, key.len() as u64 + 3), "{err}");
            assert!(
                err.message
                    .contains("only name a container of this namespace")
                    && err.message.contains("`berth-<task>-<index>`"),
                "{err}"
            );
            assert!(check("web.yaml", &foreign, &privileged()).is_ok(), "{key}");
            let other_ns = format!("image: x\n{key}: container:edge-db-0\n");
            assert!(check("web.yaml", &other_ns, &ValidationContext::default()).is_err());
            let edge = ValidationContext {
                namespace: "edge".into(),
                ..ValidationContext::default()
            };
            assert!(check("web.yaml", &other_ns, &edge).is_ok(), "{key}");
        }
    }

    #[test]
    fn a_container_network_cannot_publish_ports() {
        let err = only_error("image: x\nnetwork_mode: container:berth-db-0\nports:\n  http: {}\n");
        assert_eq!((err.line, err.column), (4, 3));
        assert!(err.message.contains("cannot publish ports"), "{err}");
    }

    /// A value in an error is an escaped excerpt of at most 40 characters,
    /// and only of a field that carries no secret by its type.
    #[test]
    fn errors_show_values_only_as_short_escaped_excerpts() {
        let long = format!("/srv/{}", "a".repeat(60));
        let ctx = ValidationContext {
            allow_host_volumes: false,
            ..ValidationContext::default()
        };
        let err = only_error_with(&format!("image: x\nvolumes: [\"{long}:/x\"]\n"), &ctx);
        assert!(!err.message.contains(&long), "{err}");
        assert!(
            err.message.contains(&format!("`{}…`", &long[..40])),
            "{err}"
        );
        let err = only_error("image: \"a\\u0007b`c d\"\n");
        assert!(err.message.contains("`a\\u{7}b\\`c d`"), "{err}");
        assert!(!err.message.contains('\u{7}'), "{err}");
        let err = only_error("image: x\nhealthcheck: {test: [\"curl -u admin:hunter2 x\"]}\n");
        assert!(!err.message.contains("hunter2"), "{err}");
        let err = only_error("image: x\nenv: {PW: {value: \"${hunter2 pw}\", secret: true}}\n");
        assert!(err.message.contains("is not a valid reference"), "{err}");
        assert!(!err.message.contains("hunter2"), "{err}");
        assert_eq!(shown(&"é".repeat(50)).chars().count(), MAX_EXCERPT + 1);
    }

    #[test]
    fn host_volumes_are_refused_when_the_agent_forbids_them() {
        let ctx = ValidationContext {
            allow_host_volumes: false,
            ..ValidationContext::default()
        };
        let err = only_error_with(
            "image: x\nvolumes:\n  - berth-data:/data\n  - /srv:/srv:ro\n",
            &ctx,
        );
        assert_eq!((err.line, err.column), (4, 5));
        assert!(
            err.message.contains("docker.volumes.enabled: true"),
            "{err}"
        );
    }

    #[test]
    fn named_volumes_of_other_owners_need_the_volumes_permission() {
        let off = ValidationContext {
            allow_host_volumes: false,
            ..ValidationContext::default()
        };
        let err = only_error_with("image: x\nvolumes: [\"pgdata:/data\"]\n", &off);
        assert_eq!((err.line, err.column), (2, 11));
        assert!(
            err.message.contains("does not belong to this namespace")
                && err.message.contains("`berth-<name>`"),
            "{err}"
        );
        assert!(check(
            "web.yaml",
            "image: x\nvolumes: [\"berth-data:/data\"]\n",
            &off
        )
        .is_ok());
        assert!(check(
            "web.yaml",
            "image: x\nvolumes: [\"pgdata:/data\"]\n",
            &ValidationContext::default()
        )
        .is_ok());
    }

    #[test]
    fn the_allowed_volume_list_narrows_host_paths_and_volume_names() {
        let tmp = tempfile::tempdir().unwrap();
        let www = tmp.path().join("www");
        std::fs::create_dir(&www).unwrap();
        std::os::unix::fs::symlink("/etc", www.join("escape")).unwrap();
        let ctx = ValidationContext {
            allowed_volumes: Some(vec![www.display().to_string(), "cache".into()]),
            ..ValidationContext::default()
        };
        let ok = format!(
            "image: x\nvolumes:\n  - \"{}/site:/site\"\n  - cache:/cache\n  - berth-own:/own\n",
            www.display()
        );
        assert!(check("web.yaml", &ok, &ctx).is_ok());
        for (bad, why) in [
            ("/srv:/srv".to_string(), "docker.volumes.allowed"),
            (format!("{}x:/x", www.display()), "docker.volumes.allowed"),
            (
                format!("{}/escape:/x", www.display()),
                "docker.volumes.allowed",
            ),
            (
                format!("{}/../etc:/x", www.display()),
                "must not contain `..`",
            ),
            ("pgdata:/data".to_string(), "not in docker.volumes.allowed"),
        ] {
            let err = only_error_with(&format!("image: x\nvolumes: [\"{bad}\"]\n"), &ctx);
            assert!(err.message.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn volume_strings_must_be_source_target_and_known_options() {
        assert!(only_error("image: x\nvolumes: [/srv]\n")
            .message
            .contains("SOURCE:TARGET"));
        assert!(only_error("image: x\nvolumes: [\"/srv:rel\"]\n")
            .message
            .contains("absolute path in the container"));
        assert!(only_error("image: x\nvolumes: [\"/srv:/srv:bogus\"]\n")
            .message
            .contains("unknown option `bogus`"));
        assert!(only_error("image: x\nvolumes: [\"./srv:/srv\"]\n")
            .message
            .contains("must be absolute"));
    }

    #[test]
    fn an_unknown_reference_is_reported_at_its_dollar_brace() {
        let text = "image: x\nports:\n  http: {}\nargs: [\"--port\", \"${BERTH_PORT_http} ${BERTH_PORT_admin}\"]\n";
        let err = only_error(text);
        assert_eq!((err.line, err.column), (4, 38));
        assert!(
            err.message.contains("unknown name `${BERTH_PORT_admin}`"),
            "{err}"
        );
        assert!(err.message.contains("no port label `admin`"), "{err}");
    }

    #[test]
    fn references_to_env_meta_node_and_berth_names_are_accepted() {
        let ctx = ValidationContext {
            meta: BTreeMap::from([("site".to_string(), "berlin".to_string())]),
            ..ValidationContext::default()
        };
        let text = "image: x\ncommand: /srv\nargs: [\"${meta.site}\", \"${node.ip}\", \"${MODE}\", \"$${LITERAL}\"]\n\
            env:\n  MODE: prod\n  ADDR: \"${BERTH_ADDR_http}\"\nports:\n  http: {}\n\
            labels:\n  who: \"${BERTH_TASK}-${BERTH_INDEX}\"\nhostname: \"${node.hostname}\"\n";
        assert!(
            check("web.yaml", text, &ctx).is_ok(),
            "{:?}",
            check("web.yaml", text, &ctx)
        );
    }

    #[test]
    fn an_unknown_meta_key_names_the_agent_config() {
        let err = only_error("image: x\nenv:\n  SITE: \"${meta.site}\"\n");
        assert_eq!((err.line, err.column), (3, 10));
        assert!(err.message.contains("no meta key `site`"), "{err}");
    }

    #[test]
    fn an_unterminated_reference_in_a_block_scalar_is_located() {
        let err = only_error("image: x\ncommand: |\n  echo hi\n  echo ${oops\n");
        assert_eq!((err.line, err.column), (4, 8));
        assert!(err.message.contains("without a closing"), "{err}");
    }

    #[test]
    fn a_valid_full_manifest_passes() {
        let text = r#"name: web
image: nginx:1.27
command: /bin/server
args: ["--port", "${BERTH_PORT_http}"]
entrypoint: ["/init"]
count: 2
env:
  MODE: production
  DB_PASSWORD: {file: /run/secrets/db, secret: true}
labels:
  group: webservice-cache
ports:
  http: {}
port_map:
  http: 80
resources: {cpu: 500, memory: 256}
network_mode: bridge
hostname: web1
dns_servers: ["1.1.1.1"]
volumes: ["/srv/web:/usr/share/nginx/html:ro"]
auth: {username: deploy, password_file: /etc/berth/registry-password}
pull: missing
restart: {policy: always, delay: 1s, max_delay: 5m, reset_after: 10m}
healthcheck:
  test: ["CMD", "wget", "-q", "-O-", "http://127.0.0.1/"]
  interval: 10s
stop_timeout: 10s
"#;
        let tasks = check("whatever.yaml", text, &ValidationContext::default())
            .unwrap_or_else(|e| panic!("{e:#?}"));
        assert_eq!(tasks[0].name, "web");
        assert_eq!(tasks[0].manifest.count, 2);
    }

    fn gateway() -> ValidationContext {
        ValidationContext {
            meta: [("role".to_string(), "gateway".to_string())].into(),
            ..ValidationContext::default()
        }
    }

    #[test]
    fn a_select_key_other_than_meta_or_hostname_is_an_error_naming_the_allowed_keys() {
        let err = only_error("image: x\nselect:\n  meta.role: gateway\n  node.ip: 10.0.0.1\n");
        assert_eq!((err.line, err.column), (4, 3));
        assert_eq!(
            err.message,
            "select key `node.ip` is not known: use `meta.<key>` (exact value of the agent's meta key) or `node.hostname` (a glob such as edge-*)"
        );
        let err = only_error("image: x\nselect: {meta.: x}\n");
        assert!(
            err.message.contains("select key `meta.`"),
            "{}",
            err.message
        );
        let err = only_error("image: x\nselect: {meta.role: \"\"}\n");
        assert!(err.message.contains("is empty"), "{}", err.message);
        assert_eq!((err.line, err.column), (2, 21));
    }

    #[test]
    fn selection_is_decided_by_meta_and_hostname() {
        let text = "image: x\nselect: {meta.role: gateway, node.hostname: edge-*}\n";
        let tasks = check_file_on("gw.yaml", text, &gateway(), "edge-01")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(tasks[0].not_selected, None);
        let tasks = check_file_on("gw.yaml", text, &gateway(), "core-01")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(
            tasks[0].not_selected.as_deref(),
            Some("node.hostname core-01 does not match edge-*")
        );
    }

    #[test]
    fn a_task_not_selected_here_skips_the_checks_that_depend_on_this_agent() {
        let text = "image: x\nselect: {meta.role: gateway}\nprivileged: true\nnetwork_mode: gw-net\nenv: {UPSTREAM: \"${meta.upstream}\"}\n";
        // On a worker: not selected, and neither its meta key nor its
        // privilege is this agent's business.
        let tasks = check_file_on("gw.yaml", text, &ValidationContext::default(), "w1")
            .unwrap_or_else(|e| panic!("{e:?}"));
        assert!(tasks[0].not_selected.is_some());
        // On a gateway that lacks both, they are errors as always.
        let errors = check_file_on("gw.yaml", text, &gateway(), "g1")
            .err()
            .unwrap_or_default();
        let messages: Vec<&str> = errors.iter().map(|e| e.message.as_str()).collect();
        assert_eq!(errors.len(), 3, "{messages:?}");
        assert!(messages.iter().any(|m| m.contains("privileged")));
        assert!(messages
            .iter()
            .any(|m| m.contains("docker.networks.allowed")));
        assert!(messages.iter().any(|m| m.contains("meta key `upstream`")));
        // Shape errors count everywhere.
        let err = check_file_on(
            "gw.yaml",
            "image: x\nselect: {meta.role: gateway}\ncount: 5000\n",
            &ValidationContext::default(),
            "w1",
        )
        .err()
        .unwrap_or_default();
        assert_eq!(err.len(), 1);
    }

    #[test]
    fn schedule_and_max_attempts_are_for_jobs_only() {
        let err = only_error("image: x\nschedule: \"* * * * *\"\n");
        assert_eq!((err.line, err.column), (2, 1));
        assert!(err.message.contains("add `kind: job`"), "{err}");
        let err = only_error("image: x\nmax_attempts: 2\n");
        assert!(err.message.contains("for jobs only"), "{err}");
        let ok = "image: x\nkind: job\nschedule: \"*/15 * * * *\"\nmax_attempts: 2\n";
        assert!(check("web.yaml", ok, &ValidationContext::default()).is_ok());
    }

    #[test]
    fn a_schedule_must_be_cron_syntax_with_five_or_six_fields() {
        let err = only_error("image: x\nkind: job\nschedule: \"every minute\"\n");
        assert_eq!((err.line, err.column), (3, 11));
        assert!(err.message.contains("not a cron schedule"), "{err}");
        let err = only_error("image: x\nkind: job\nschedule: \"61 * * * *\"\n");
        assert!(err.message.contains("61 * * * *"), "{err}");
        let seconds = "image: x\nkind: job\nschedule: \"*/20 * * * * *\"\n";
        assert!(check("web.yaml", seconds, &ValidationContext::default()).is_ok());
    }

    #[test]
    fn a_job_runs_one_container_and_at_least_one_attempt() {
        let err = only_error("image: x\nkind: job\ncount: 2\n");
        assert!(err.message.contains("a job runs one container"), "{err}");
        let err = only_error("image: x\nkind: job\nmax_attempts: 0\n");
        assert!(err.message.contains("at least 1"), "{err}");
        let err = only_error("image: x\nkind: job\nupdate: {order: start-first}\n");
        assert!(err.message.contains("never updated in place"), "{err}");
    }

    #[test]
    fn a_task_cannot_depend_on_itself() {
        let err = only_error("image: x\ndepends_on:\n  web: started\n");
        assert_eq!((err.line, err.column), (3, 3));
        assert!(err.message.contains("depends on itself"), "{err}");
        let err = only_error("image: x\ndepends_on: {Db_1: started}\n");
        assert!(err.message.contains("not a valid task name"), "{err}");
    }

    #[test]
    fn a_dependency_condition_outside_the_three_is_refused() {
        let err = only_error("image: x\ndepends_on: {db: ready}\n");
        assert_eq!(
            err.message,
            "`depends_on.db`: expected one of started, healthy, completed"
        );
    }

    #[test]
    fn start_first_is_refused_with_a_static_host_port() {
        let err =
            only_error("image: x\nports: {http: {static: 8080}}\nupdate: {order: start-first}\n");
        assert_eq!((err.line, err.column), (3, 17));
        assert!(err.message.contains("static port 8080"), "{err}");
        let dynamic = "image: x\nports: {http: {}}\nupdate: {order: start-first}\n";
        assert!(check("web.yaml", dynamic, &ValidationContext::default()).is_ok());
    }
}
