//! The manifest folder → the desired set of tasks, with per-file errors.
//!
//! Two steps, kept apart: [`load_folder`] reads what the folder says *now*
//! (pure apart from reading files), and [`DesiredTracker`] remembers each
//! file's last good version so that a broken file never costs running work
//! (bad input never costs running work: ARCHITECTURE.md). Only the deletion of a file removes its tasks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::manifest::files::{read_manifest_file, read_regular, FilePolicy, FileText, OpenError};
use crate::manifest::parse::MAX_FILE_BYTES;
use crate::manifest::shape::parse_all;
use crate::manifest::validate::{check_file, check_parsed_on, CheckedTask, ValidationContext};
use crate::manifest::{ManifestError, ParsedTask, TaskManifest};

/// The folder itself could not be read. Never treated as "no tasks": a
/// missing or unreadable folder (an unmounted disk, a checkout in progress)
/// must not remove anything.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    #[error("manifest directory {} does not exist", dir.display())]
    Missing { dir: PathBuf },
    #[error("manifest path {} is not a directory", dir.display())]
    NotADirectory { dir: PathBuf },
    #[error("manifest directory {} cannot be read: {cause}", dir.display())]
    Unreadable { dir: PathBuf, cause: std::io::Error },
}

/// One task as the folder defines it.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDef {
    pub name: String,
    /// The manifest's path relative to the folder, e.g. `web.yaml`; becomes
    /// the `io.berth.manifest` label. Not part of the spec: renaming a file
    /// restarts nothing.
    pub file: String,
    /// 1-based line where the task's document starts.
    pub line: u64,
    pub manifest: TaskManifest,
    /// The text of the files it names (`env.<KEY>`, `auth.password_file`),
    /// read under the agent's `files` rules when the folder was loaded.
    pub files: BTreeMap<String, FileText>,
    /// The git commit this version of the task was read from, when the
    /// manifests come from a git source; the `io.berth.source-commit`
    /// label of the containers created from it. Not part of the spec.
    pub source_commit: Option<String>,
}

/// A task whose `select:` excludes this agent: shown by plan and status,
/// never desired. A running container of it is removed like that of a
/// deleted task.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UnselectedTask {
    pub name: String,
    pub file: String,
    pub line: u64,
    /// The entry this agent does not match, e.g. `meta.role is worker, not gateway`.
    pub reason: String,
}

/// What the folder says right now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadedFolder {
    /// Tasks from files without any error, selected for this agent.
    pub tasks: BTreeMap<String, TaskDef>,
    /// Tasks from files without any error whose `select:` excludes this agent.
    pub unselected: BTreeMap<String, UnselectedTask>,
    pub errors: Vec<ManifestError>,
    /// Files with at least one error; they contribute no task.
    pub failed_files: BTreeSet<String>,
    /// Every manifest file present (good or failed), by relative path.
    pub files: BTreeSet<String>,
    /// A digest of every manifest's name and bytes: it changes exactly when
    /// the folder's contents do, so "quiet for N seconds" can be told.
    pub fingerprint: String,
}

/// Whether a directory entry is a manifest rather than an editor's or a
/// package manager's leftover. Note `4913` (vim's write probe) has no YAML
/// extension and so is ignored.
pub fn is_manifest_file_name(name: &str) -> bool {
    const IGNORED_SUFFIXES: &[&str] = &["~", ".swp", ".swx", ".tmp", ".bak", ".orig"];
    !name.starts_with('.')
        && !IGNORED_SUFFIXES.iter().any(|s| name.ends_with(s))
        && !name.contains(".dpkg-")
        && (name.ends_with(".yaml") || name.ends_with(".yml"))
}

/// Read a manifest file as text, enforcing the size cap and UTF-8.
/// `display` is the name errors carry.
fn read_manifest(path: &Path, display: &str) -> Result<String, ManifestError> {
    let fail = |why: String| ManifestError::whole_file(display, why);
    // Follows symlinks (git-sync's `web.yaml -> ..data/web.yaml`); a dangling
    // one fails here, as an error for this file only. Opened without
    // blocking and checked before reading: a FIFO named `x.yaml` must not
    // hang the pass, and at most one byte past the cap is read, so a file
    // that grows meanwhile cannot make the read unbounded.
    let bytes = read_regular(path, MAX_FILE_BYTES, true).map_err(|e| match e {
        OpenError::TooLarge => fail(format!(
            "is larger than the {MAX_FILE_BYTES}-byte limit for a manifest"
        )),
        OpenError::NotRegular(kind) => fail(format!(
            "is {kind}, not a regular file; a manifest must be a regular file"
        )),
        OpenError::NotFound => {
            fail("cannot be read: it does not exist (a dangling symlink?)".into())
        }
        OpenError::Io(why) => fail(format!("cannot be read: {why}")),
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|b| **b == b'\n').count() as u64 + 1;
        let line_start = valid.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        let column = String::from_utf8_lossy(&valid[line_start..])
            .chars()
            .count() as u64
            + 1;
        ManifestError {
            file: display.to_string(),
            line,
            column,
            message: "the file is not UTF-8 text (a manifest must be UTF-8 YAML)".to_string(),
        }
    })
}

/// Each manifest's last parse, by the digest of its bytes, so that a pass
/// over an unchanged folder does not parse YAML again (at a cold start of
/// hundreds of tasks, re-parsing every file at every pass was a quarter of
/// berth's CPU).
///
/// Only the parse is kept: it depends on the bytes alone. Everything after
/// it (the rules that look at the agent config, its meta and the host, such
/// as the canonical path of a volume's source) runs at every pass. Holds
/// the files of the last load only, so it never outgrows the folder.
#[derive(Debug, Default)]
pub struct ParseCache {
    files: HashMap<String, CachedParse>,
    /// How many files the last load parsed anew.
    parsed_last: usize,
}

#[derive(Debug)]
struct CachedParse {
    digest: [u8; 32],
    parsed: Result<Vec<ParsedTask>, Vec<ManifestError>>,
}

impl ParseCache {
    /// The parse of `text`, the content of the file `name`: the kept one
    /// when the bytes are those parsed last time, else a new parse, kept
    /// for next time in `next`.
    fn parse(
        &mut self,
        next: &mut HashMap<String, CachedParse>,
        name: &str,
        text: &str,
    ) -> Result<Vec<ParsedTask>, Vec<ManifestError>> {
        let digest: [u8; 32] = Sha256::digest(text.as_bytes()).into();
        let kept = match self.files.remove(name) {
            Some(kept) if kept.digest == digest => kept,
            _ => {
                self.parsed_last += 1;
                CachedParse {
                    digest,
                    parsed: parse_all(name, text),
                }
            }
        };
        let parsed = kept.parsed.clone();
        next.insert(name.to_string(), kept);
        parsed
    }

    /// How many files the last load parsed (the others' bytes were
    /// unchanged).
    pub fn parsed_last(&self) -> usize {
        self.parsed_last
    }

    /// How many files' parses are kept.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Load every manifest in `dir` (not recursive). Per-file problems are
/// entries in [`LoadedFolder::errors`]; only a folder that cannot be listed
/// at all is a [`FolderError`]. `select:` is decided for this host's name.
pub fn load_folder(dir: &Path, ctx: &ValidationContext) -> Result<LoadedFolder, FolderError> {
    load_folder_on(dir, ctx, &crate::node::this_hostname())
}

/// [`load_folder`] for the agent on host `hostname` (with `ctx.meta`):
/// tasks whose `select:` does not match go to [`LoadedFolder::unselected`].
pub fn load_folder_on(
    dir: &Path,
    ctx: &ValidationContext,
    hostname: &str,
) -> Result<LoadedFolder, FolderError> {
    load_folder_cached(dir, ctx, hostname, &mut ParseCache::default())
}

/// [`load_folder_on`], parsing only the files whose bytes changed since the
/// last load with the same `cache`. The result is the same as without it.
pub fn load_folder_cached(
    dir: &Path,
    ctx: &ValidationContext,
    hostname: &str,
    cache: &mut ParseCache,
) -> Result<LoadedFolder, FolderError> {
    let meta = std::fs::metadata(dir).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => FolderError::Missing {
            dir: dir.to_path_buf(),
        },
        _ => FolderError::Unreadable {
            dir: dir.to_path_buf(),
            cause: source,
        },
    })?;
    if !meta.is_dir() {
        return Err(FolderError::NotADirectory {
            dir: dir.to_path_buf(),
        });
    }
    let unreadable = |source| FolderError::Unreadable {
        dir: dir.to_path_buf(),
        cause: source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(unreadable)? {
        // A listing that breaks halfway would look like deleted files;
        // fail the whole folder instead.
        names.push(entry.map_err(unreadable)?.file_name());
    }
    names.sort();

    let mut loaded = LoadedFolder::default();
    let mut fingerprint = Sha256::new();
    let mut per_file: BTreeMap<String, Vec<CheckedTask>> = BTreeMap::new();
    let mut parsed = HashMap::new();
    cache.parsed_last = 0;
    for os_name in names {
        let lossy = os_name.to_string_lossy().into_owned();
        if !is_manifest_file_name(&lossy) {
            continue;
        }
        let Some(name) = os_name.to_str().map(str::to_string) else {
            // It cannot be named in a label or a message faithfully; say so.
            loaded.errors.push(ManifestError::whole_file(
                &lossy,
                "the file name is not valid UTF-8; rename the file",
            ));
            continue;
        };
        let path = dir.join(&name);
        // Follows symlinks (git-sync's `web.yaml -> ..data/web.yaml`).
        // Directories that happen to end in .yaml are not manifests.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        loaded.files.insert(name.clone());
        let text = read_manifest(&path, &name);
        fingerprint.update(name.as_bytes());
        fingerprint.update([0]);
        match &text {
            Ok(text) => fingerprint.update(text.as_bytes()),
            Err(e) => fingerprint.update(e.to_string().as_bytes()),
        }
        fingerprint.update([0]);
        let result = text
            .map_err(|e| vec![e])
            .and_then(|text| {
                let docs = cache.parse(&mut parsed, &name, &text)?;
                check_parsed_on(&name, &text, docs, ctx, hostname)
            })
            .and_then(|tasks| read_task_files(tasks, &name, dir, &ctx.files));
        match result {
            Ok(tasks) => {
                per_file.insert(name, tasks);
            }
            Err(errors) => {
                loaded.errors.extend(errors);
                loaded.failed_files.insert(name);
            }
        }
    }
    cache.files = parsed;
    let merged = merge_files(per_file, !loaded.failed_files.is_empty());
    loaded.tasks = merged.tasks;
    loaded.unselected = merged.unselected;
    loaded.errors.extend(merged.errors);
    loaded.failed_files.extend(merged.failed);
    cap_instances(&mut loaded, ctx.max_instances);
    loaded.fingerprint = hex::encode(fingerprint.finalize());
    Ok(loaded)
}

/// Read the files the selected tasks of one good manifest name, under the
/// agent's `files` rules. Any refusal fails the whole manifest at the line
/// and column of the path; nothing of a refused file is read.
pub fn read_task_files(
    mut tasks: Vec<CheckedTask>,
    display: &str,
    manifest_dir: &Path,
    policy: &FilePolicy,
) -> Result<Vec<CheckedTask>, Vec<ManifestError>> {
    let mut errors = Vec::new();
    for task in tasks.iter_mut().filter(|t| t.not_selected.is_none()) {
        for r in &task.file_refs {
            match read_manifest_file(policy, manifest_dir, &r.written) {
                Ok(text) => {
                    task.files.insert(r.field.clone(), text);
                }
                Err(e) => errors.push(ManifestError::new(
                    display,
                    r.pos,
                    format!("{}: {e}", r.field),
                )),
            }
        }
    }
    if errors.is_empty() {
        Ok(tasks)
    } else {
        Err(errors)
    }
}

/// A typo (`count: 100000` in one file, or many files) must not ask the
/// daemon for a container storm: when the folder asks for more than `max`
/// instances, the files asking for the most fail, largest first, until the
/// rest fits. Each such file is an error naming its count and the limit;
/// like any failed file it keeps its last good tasks.
pub fn cap_instances(loaded: &mut LoadedFolder, max: u32) {
    let mut per_file: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for def in loaded.tasks.values() {
        let entry = per_file.entry(def.file.as_str()).or_insert((0, def.line));
        entry.0 += u64::from(def.manifest.count);
        entry.1 = entry.1.min(def.line);
    }
    let mut total: u64 = per_file.values().map(|(n, _)| n).sum();
    if total <= u64::from(max) {
        return;
    }
    let asked = total;
    let mut largest: Vec<(&str, u64, u64)> =
        per_file.iter().map(|(f, (n, l))| (*f, *n, *l)).collect();
    largest.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    let mut failing = Vec::new();
    for (file, count, line) in largest {
        if total <= u64::from(max) {
            break;
        }
        total -= count;
        failing.push((file.to_string(), count, line));
    }
    for (file, count, line) in failing {
        loaded.errors.push(ManifestError {
            file: file.clone(),
            line,
            column: 1,
            message: format!(
                "asks for {count} instances; the folder asks for {asked} in all, more than the \
                 agent allows (max_instances: {max}); lower `count` or raise max_instances"
            ),
        });
        loaded.tasks.retain(|_, def| def.file != file);
        loaded.failed_files.insert(file);
    }
}

/// Good files' tasks joined into one folder.
struct Merged {
    tasks: BTreeMap<String, TaskDef>,
    unselected: BTreeMap<String, UnselectedTask>,
    errors: Vec<ManifestError>,
    failed: BTreeSet<String>,
}

/// Join good files' tasks into one map. A name defined by several files is
/// an error reported in each of them, and every such file fails as a whole.
/// Names are unique across the folder whatever `select:` says, so a folder
/// has the same errors on every host of a fleet.
///
/// `any_failed`: some file of the folder has errors, so a task it defines
/// is unknown right now; a dependency on an unknown name is then not an
/// error of its own (the broken file's error says what to fix).
fn merge_files(per_file: BTreeMap<String, Vec<CheckedTask>>, any_failed: bool) -> Merged {
    let mut owners: BTreeMap<&str, Vec<(&str, u64)>> = BTreeMap::new();
    for (file, tasks) in &per_file {
        for task in tasks {
            owners
                .entry(task.name.as_str())
                .or_default()
                .push((file.as_str(), task.line));
        }
    }
    let mut errors = Vec::new();
    let mut failed = BTreeSet::new();
    for (name, defs) in owners.iter().filter(|(_, defs)| defs.len() > 1) {
        for (file, line) in defs {
            let others: Vec<String> = defs
                .iter()
                .filter(|(f, _)| f != file)
                .map(|(f, l)| format!("{f}:{l}"))
                .collect();
            errors.push(ManifestError {
                file: file.to_string(),
                line: *line,
                column: 1,
                message: format!(
                    "task `{name}` is also defined in {}; task names must be unique across the folder",
                    others.join(", ")
                ),
            });
            failed.insert(file.to_string());
        }
    }
    let (dep_errors, dep_failed) = check_dependencies(&per_file, &failed, any_failed);
    errors.extend(dep_errors);
    failed.extend(dep_failed);
    let mut tasks = BTreeMap::new();
    let mut unselected = BTreeMap::new();
    for (file, checked) in per_file {
        if failed.contains(&file) {
            continue;
        }
        for task in checked {
            if let Some(reason) = task.not_selected {
                unselected.insert(
                    task.name.clone(),
                    UnselectedTask {
                        name: task.name,
                        file: file.clone(),
                        line: task.line,
                        reason,
                    },
                );
                continue;
            }
            tasks.insert(
                task.name.clone(),
                TaskDef {
                    name: task.name,
                    file: file.clone(),
                    line: task.line,
                    manifest: task.manifest,
                    files: task.files,
                    source_commit: None,
                },
            );
        }
    }
    Merged {
        tasks,
        unselected,
        errors,
        failed,
    }
}

/// `depends_on` across the folder: every name is a task some file defines
/// (selected here or not), `completed` names a job, and there is no cycle.
/// Each error points at the `depends_on` entry and names the other task's
/// file; every file of a cycle fails (and keeps its last good tasks).
fn check_dependencies(
    per_file: &BTreeMap<String, Vec<CheckedTask>>,
    duplicated: &BTreeSet<String>,
    names_may_be_missing: bool,
) -> (Vec<ManifestError>, BTreeSet<String>) {
    use crate::manifest::{DependencyCondition, TaskKind};
    let mut defs: BTreeMap<&str, (&str, &CheckedTask)> = BTreeMap::new();
    for (file, tasks) in per_file {
        if duplicated.contains(file) {
            continue;
        }
        for task in tasks {
            defs.insert(task.name.as_str(), (file.as_str(), task));
        }
    }
    let mut errors = Vec::new();
    let mut failed = BTreeSet::new();
    let at = |task: &CheckedTask, dep: &str| {
        task.depends_at
            .get(dep)
            .copied()
            .unwrap_or(crate::manifest::Pos {
                line: task.line,
                column: 1,
            })
    };
    for (name, (file, task)) in &defs {
        for (dep, condition) in &task.manifest.depends_on {
            if dep == name {
                continue; // reported by the file's own checks
            }
            match defs.get(dep.as_str()) {
                None if names_may_be_missing => {}
                None => {
                    let known: Vec<&str> = defs.keys().filter(|n| *n != name).copied().collect();
                    errors.push(ManifestError::new(
                        file,
                        at(task, dep),
                        format!(
                            "`{name}` depends on `{dep}`, which no manifest in the folder defines (tasks: {}); fix the name or add its manifest",
                            if known.is_empty() { "none other".to_string() } else { known.join(", ") }
                        ),
                    ));
                    failed.insert(file.to_string());
                }
                Some((dep_file, dep_task))
                    if *condition == DependencyCondition::Completed
                        && dep_task.manifest.kind != TaskKind::Job =>
                {
                    errors.push(ManifestError::new(
                        file,
                        at(task, dep),
                        format!(
                            "`{name}` waits for `{dep}` to be completed, but `{dep}` ({dep_file}:{}) is a service, which never completes; use `started` or `healthy`, or make it `kind: job`",
                            dep_task.line
                        ),
                    ));
                    failed.insert(file.to_string());
                }
                Some(_) => {}
            }
        }
    }
    // Cycles: one depth-first walk over the whole graph (each task is
    // finished once, so a large folder costs linear time); an entry that
    // leads back into the current path closes a cycle, reported at every
    // entry along it.
    let mut finished: BTreeSet<&str> = BTreeSet::new();
    for start in defs.keys() {
        if finished.contains(start) {
            continue;
        }
        let mut path: Vec<&str> = vec![start];
        let mut stack = vec![defs[start].1.manifest.depends_on.keys()];
        while let Some(next) = stack.last_mut().map(Iterator::next) {
            let Some(dep) = next else {
                stack.pop();
                if let Some(done) = path.pop() {
                    finished.insert(done);
                }
                continue;
            };
            let Some((dep_name, (_, dep_task))) = defs.get_key_value(dep.as_str()) else {
                continue;
            };
            if finished.contains(dep_name) {
                continue;
            }
            let Some(pos) = path.iter().position(|n| n == dep_name) else {
                path.push(dep_name);
                stack.push(dep_task.manifest.depends_on.keys());
                continue;
            };
            let cycle = &path[pos..];
            if cycle.len() < 2 {
                continue; // a task naming itself: the file's own check says so
            }
            let shown: Vec<&str> = cycle.iter().chain(&cycle[..1]).copied().collect();
            let shown = shown.join(" → ");
            for (i, task_name) in cycle.iter().enumerate() {
                let (file, task) = defs[task_name];
                let dep = cycle[(i + 1) % cycle.len()];
                let (dep_file, dep_def) = defs[dep];
                errors.push(ManifestError::new(
                    file,
                    at(task, dep),
                    format!(
                        "dependency cycle {shown}: `{task_name}` waits for `{dep}` ({dep_file}:{}), which leads back to `{task_name}`; remove one of these depends_on entries",
                        dep_def.line
                    ),
                ));
                failed.insert(file.to_string());
            }
        }
    }
    (errors, failed)
}

/// The desired tasks for one reconcile pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredSet {
    pub tasks: BTreeMap<String, TaskDef>,
    /// Tasks this agent is not selected for (from files that load now).
    pub unselected: BTreeMap<String, UnselectedTask>,
    pub errors: Vec<ManifestError>,
    /// Failed files with no last good version in this process. A container
    /// whose `io.berth.manifest` label names one of these must be left
    /// untouched: after a restart berth cannot know what the file meant.
    pub protected_files: BTreeSet<String>,
}

/// Remembers each file's last good tasks, so that a file that breaks keeps
/// its tasks as they were, and only deleting a file removes them.
///
/// Warning: the memory is per process. After a restart a file that is
/// already broken has no last good version; it is reported in
/// [`DesiredSet::protected_files`] so its containers are not touched.
#[derive(Debug, Clone, Default)]
pub struct DesiredTracker {
    last_good: BTreeMap<String, Vec<TaskDef>>,
}

impl DesiredTracker {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fold one folder load into the desired set.
    pub fn update(&mut self, loaded: LoadedFolder) -> DesiredSet {
        // Deleted files are forgotten: deletion is the one way to remove tasks.
        self.last_good.retain(|file, _| loaded.files.contains(file));
        let mut good: BTreeMap<String, Vec<TaskDef>> = loaded
            .files
            .iter()
            .filter(|f| !loaded.failed_files.contains(*f))
            .map(|f| (f.clone(), Vec::new()))
            .collect();
        for def in loaded.tasks.values() {
            good.entry(def.file.clone()).or_default().push(def.clone());
        }
        for (file, defs) in good {
            self.last_good.insert(file, defs);
        }

        let mut tasks = loaded.tasks;
        let mut protected_files = BTreeSet::new();
        for file in &loaded.failed_files {
            match self.last_good.get(file) {
                Some(defs) => {
                    for def in defs {
                        // A currently good file defining the same name wins:
                        // it is what the folder says now.
                        tasks.entry(def.name.clone()).or_insert_with(|| def.clone());
                    }
                }
                None => {
                    protected_files.insert(file.clone());
                }
            }
        }
        // A last good task that this agent is no longer selected for
        // (its file is broken now) stays desired: the file's last good
        // version is what counts until the file loads again.
        DesiredSet {
            tasks,
            unselected: loaded.unselected,
            errors: loaded.errors,
            protected_files,
        }
    }
}

/// `berth validate [PATH...]`: every error in the given files and folders.
/// Folders follow [`load_folder`]'s rules (including duplicates across its
/// files); explicitly named files are also checked for duplicates among
/// themselves. File names in errors are shown as the user can open them.
pub fn validate_paths(paths: &[PathBuf], ctx: &ValidationContext) -> Vec<ManifestError> {
    let mut errors = Vec::new();
    let mut explicit: BTreeMap<String, Vec<CheckedTask>> = BTreeMap::new();
    for path in paths {
        let shown = path.display().to_string();
        if std::fs::metadata(path).is_ok_and(|m| m.is_dir()) {
            match load_folder(path, ctx) {
                Ok(loaded) => errors.extend(loaded.errors.into_iter().map(|mut e| {
                    e.file = path.join(&e.file).display().to_string();
                    e
                })),
                Err(e) => errors.push(ManifestError::whole_file(&shown, e.to_string())),
            }
            continue;
        }
        let manifest_dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        match read_manifest(path, &shown)
            .map_err(|e| vec![e])
            .and_then(|text| check_file(&shown, &text, ctx))
            .and_then(|tasks| read_task_files(tasks, &shown, &manifest_dir, &ctx.files))
        {
            Ok(tasks) => {
                explicit.insert(shown, tasks);
            }
            Err(file_errors) => errors.extend(file_errors),
        }
    }
    // Files named one by one may depend on tasks of files not named:
    // only cycles among them, and conditions, are checked.
    errors.extend(merge_files(explicit, true).errors);
    errors
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn ctx() -> ValidationContext {
        ValidationContext::default()
    }

    fn write(dir: &Path, name: &str, text: &str) {
        fs::write(dir.join(name), text).unwrap_or_else(|e| panic!("writing {name}: {e}"));
    }

    fn load(dir: &Path) -> LoadedFolder {
        load_folder(dir, &ctx()).unwrap_or_else(|e| panic!("{e}"))
    }

    fn names(tasks: &BTreeMap<String, TaskDef>) -> Vec<&str> {
        tasks.keys().map(String::as_str).collect()
    }

    fn tempdir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
    }

    #[test]
    fn files_a_manifest_names_are_read_relative_to_its_folder() {
        let tmp = tempdir();
        fs::create_dir(tmp.path().join("secrets")).unwrap();
        write(tmp.path(), "secrets/db", "pw1\n");
        write(
            tmp.path(),
            "web.yaml",
            "image: x\nenv:\n  DB: {file: secrets/db}\nauth: {username: u, password_file: secrets/db}\n",
        );
        let loaded = load(tmp.path());
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        let files = &loaded.tasks["web"].files;
        assert_eq!(files["env.DB"].0, "pw1");
        assert_eq!(files["auth.password_file"].0, "pw1");
    }

    #[test]
    fn a_file_outside_the_allowed_folders_fails_its_manifest_at_the_path() {
        let outside = tempdir();
        write(outside.path(), "shadow", "root:$6$secret\n");
        let tmp = tempdir();
        let shadow = outside.path().join("shadow");
        write(
            tmp.path(),
            "web.yaml",
            &format!(
                "image: x\nenv:\n  DB: {{file: {}}}\nauth: {{password_file: ../../../../../../../..{}}}\n",
                shadow.display(),
                shadow.display()
            ),
        );
        let loaded = load(tmp.path());
        assert!(loaded.tasks.is_empty());
        assert!(loaded.failed_files.contains("web.yaml"));
        let positions: Vec<(u64, u64)> = loaded.errors.iter().map(|e| (e.line, e.column)).collect();
        assert_eq!(positions, [(3, 14), (4, 23)], "{:?}", loaded.errors);
        for e in &loaded.errors {
            let text = e.to_string();
            assert!(
                text.contains("outside the folders the agent allows"),
                "{text}"
            );
            assert!(!text.contains("root:"), "{text}");
        }
        assert!(loaded.errors[0].message.starts_with("env.DB: "));
        assert!(loaded.errors[1].message.starts_with("auth.password_file: "));
        // `berth validate` says the same.
        let errors = validate_paths(&[tmp.path().join("web.yaml")], &ctx());
        assert_eq!(errors.len(), 2, "{errors:?}");
    }

    #[test]
    fn a_fifo_manifest_is_an_error_for_that_file_and_does_not_block() {
        let tmp = tempdir();
        rustix::fs::mknodat(
            rustix::fs::CWD,
            tmp.path().join("pipe.yaml"),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        write(tmp.path(), "ok.yaml", "image: x\n");
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), ["ok"]);
        assert!(
            loaded.errors[0]
                .to_string()
                .contains("pipe.yaml:0:0: is a FIFO"),
            "{:?}",
            loaded.errors
        );
    }

    #[test]
    fn a_missing_directory_is_an_error_never_an_empty_set() {
        let tmp = tempdir();
        let result = load_folder(&tmp.path().join("not-mounted"), &ctx());
        assert!(
            matches!(result, Err(FolderError::Missing { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn a_file_given_as_the_directory_is_an_error() {
        let tmp = tempdir();
        write(tmp.path(), "web.yaml", "image: x\n");
        let result = load_folder(&tmp.path().join("web.yaml"), &ctx());
        assert!(
            matches!(result, Err(FolderError::NotADirectory { .. })),
            "{result:?}"
        );
    }

    #[test]
    fn loads_every_yaml_file_and_names_single_documents_after_the_file() {
        let tmp = tempdir();
        write(tmp.path(), "web.yaml", "image: nginx\n");
        write(
            tmp.path(),
            "jobs.yml",
            "name: a\nimage: x\n---\nname: b\nimage: y\n",
        );
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), vec!["a", "b", "web"]);
        assert_eq!(loaded.tasks["b"].file, "jobs.yml");
        assert_eq!(loaded.tasks["b"].line, 4);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
    }

    #[test]
    fn editor_temp_files_and_non_yaml_names_are_ignored() {
        let tmp = tempdir();
        write(tmp.path(), "web.yaml", "image: nginx\n");
        for junk in [
            ".web.yaml.swp",
            ".hidden.yaml",
            "web.yaml~",
            "web.yaml.swp",
            "web.yaml.swx",
            "web.yaml.tmp",
            "web.yaml.bak",
            "web.yaml.orig",
            "web.yaml.dpkg-new",
            "web.dpkg-old.yaml",
            "4913",
            "README.md",
            "web.json",
        ] {
            write(tmp.path(), junk, "this: is [not valid\n");
        }
        fs::create_dir(tmp.path().join("sub.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), vec!["web"]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.files, BTreeSet::from(["web.yaml".to_string()]));
    }

    #[cfg(unix)]
    #[test]
    fn a_git_sync_style_symlink_is_followed_and_a_dangling_one_is_a_file_error() {
        let tmp = tempdir();
        fs::create_dir(tmp.path().join("..data")).unwrap_or_else(|e| panic!("{e}"));
        write(&tmp.path().join("..data"), "web.yaml", "image: nginx\n");
        std::os::unix::fs::symlink("..data/web.yaml", tmp.path().join("web.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("..data/gone.yaml", tmp.path().join("gone.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), vec!["web"]);
        assert_eq!(loaded.tasks["web"].file, "web.yaml");
        assert_eq!(
            loaded.failed_files,
            BTreeSet::from(["gone.yaml".to_string()])
        );
        assert!(loaded.errors[0]
            .to_string()
            .starts_with("gone.yaml:0:0: cannot be read"));
    }

    #[test]
    fn a_file_with_any_error_contributes_no_task() {
        let tmp = tempdir();
        write(
            tmp.path(),
            "jobs.yaml",
            "name: a\nimage: x\n---\nname: b\nimgae: y\n",
        );
        let loaded = load(tmp.path());
        assert!(loaded.tasks.is_empty());
        assert_eq!(
            loaded.failed_files,
            BTreeSet::from(["jobs.yaml".to_string()])
        );
        let at: Vec<(u64, u64)> = loaded.errors.iter().map(|e| (e.line, e.column)).collect();
        // No `image` in the second document, and an unknown key.
        assert_eq!(at, [(4, 1), (5, 1)], "{:?}", loaded.errors);
    }

    #[test]
    fn a_task_defined_in_two_files_is_reported_for_both_and_applied_from_neither() {
        let tmp = tempdir();
        write(tmp.path(), "a.yaml", "name: web\nimage: x\n");
        write(tmp.path(), "b.yaml", "# copy\nname: web\nimage: y\n");
        write(tmp.path(), "c.yaml", "image: z\n");
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), vec!["c"]);
        let shown: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            vec![
                "a.yaml:1:1: task `web` is also defined in b.yaml:2; task names must be unique across the folder",
                "b.yaml:2:1: task `web` is also defined in a.yaml:1; task names must be unique across the folder",
            ]
        );
        assert_eq!(
            loaded.failed_files,
            BTreeSet::from(["a.yaml".to_string(), "b.yaml".to_string()])
        );
    }

    #[test]
    fn binary_junk_and_oversized_files_are_file_errors_not_panics() {
        let tmp = tempdir();
        fs::write(
            tmp.path().join("junk.yaml"),
            [0xff, 0xfe, 0x00, 0x9f, b'\n', 0x80],
        )
        .unwrap_or_else(|e| panic!("{e}"));
        fs::write(tmp.path().join("ctrl.yaml"), [0x01, 0x02, b':', 0x1b, b'['])
            .unwrap_or_else(|e| panic!("{e}"));
        let big = format!("image: x\n#{}\n", "a".repeat(MAX_FILE_BYTES as usize));
        write(tmp.path(), "big.yaml", &big);
        write(tmp.path(), "web.yaml", "image: nginx\n");
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), vec!["web"]);
        assert_eq!(
            loaded.failed_files,
            BTreeSet::from(["big.yaml".into(), "ctrl.yaml".into(), "junk.yaml".into()])
        );
        let junk = loaded.errors.iter().find(|e| e.file == "junk.yaml");
        assert!(
            junk.is_some_and(|e| e.message.contains("not UTF-8")),
            "{:?}",
            loaded.errors
        );
        let big = loaded.errors.iter().find(|e| e.file == "big.yaml");
        assert!(
            big.is_some_and(|e| e.message.contains("limit")),
            "{:?}",
            loaded.errors
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_non_utf8_file_name_is_skipped_with_an_error() {
        use std::os::unix::ffi::OsStrExt;
        let tmp = tempdir();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.yaml");
        fs::write(tmp.path().join(name), "image: x\n").unwrap_or_else(|e| panic!("{e}"));
        write(tmp.path(), "web.yaml", "image: nginx\n");
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), vec!["web"]);
        assert_eq!(loaded.errors.len(), 1);
        assert!(loaded.errors[0].message.contains("not valid UTF-8"));
    }

    #[test]
    fn a_file_with_no_task_is_an_error_and_keeps_its_last_good_tasks() {
        for empty in [
            "",
            "  \n\n",
            "# only a comment\n",
            "---\n",
            "---\n---\n# x\n",
        ] {
            let tmp = tempdir();
            write(tmp.path(), "web.yaml", "image: nginx\n");
            let mut tracker = DesiredTracker::new();
            let first = tracker.update(load(tmp.path()));
            assert_eq!(names(&first.tasks), ["web"]);

            write(tmp.path(), "web.yaml", empty);
            let loaded = load(tmp.path());
            assert!(loaded.failed_files.contains("web.yaml"), "{empty:?}");
            let message = loaded.errors[0].to_string();
            assert!(
                message.starts_with("web.yaml:") && message.contains("defines no task"),
                "{message}"
            );
            let second = tracker.update(loaded);
            assert_eq!(
                names(&second.tasks),
                ["web"],
                "{empty:?}: the task keeps running"
            );
        }
    }

    #[test]
    fn a_folder_over_the_instance_cap_fails_its_largest_files() {
        let tmp = tempdir();
        write(tmp.path(), "big.yaml", "image: nginx\ncount: 900\n");
        write(tmp.path(), "mid.yaml", "image: nginx\ncount: 300\n");
        write(tmp.path(), "small.yaml", "image: nginx\ncount: 2\n");
        let ctx = ValidationContext {
            max_instances: 1000,
            ..ctx()
        };
        let loaded = load_folder(tmp.path(), &ctx).unwrap();
        assert_eq!(names(&loaded.tasks), ["mid", "small"]);
        assert_eq!(
            loaded.failed_files,
            BTreeSet::from(["big.yaml".to_string()])
        );
        let message = loaded.errors[0].to_string();
        assert!(
            message.starts_with("big.yaml:1:1: asks for 900 instances"),
            "{message}"
        );
        assert!(message.contains("max_instances: 1000"), "{message}");
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_tasks() {
        let tmp = tempdir();
        let mut tracker = DesiredTracker::new();
        write(tmp.path(), "web.yaml", "image: nginx:1.27\n");
        let first = tracker.update(load(tmp.path()));
        write(tmp.path(), "web.yaml", "image: nginx:1.28\nimgae: oops\n");
        let second = tracker.update(load(tmp.path()));
        assert_eq!(second.tasks["web"].manifest.image, "nginx:1.27");
        assert_eq!(second.tasks, first.tasks);
        assert_eq!(second.errors.len(), 1);
        assert!(second.protected_files.is_empty());
    }

    #[test]
    fn deleting_a_file_removes_its_tasks_even_after_it_was_broken() {
        let tmp = tempdir();
        let mut tracker = DesiredTracker::new();
        write(tmp.path(), "web.yaml", "image: nginx\n");
        write(tmp.path(), "db.yaml", "image: postgres\n");
        tracker.update(load(tmp.path()));
        write(tmp.path(), "web.yaml", "image: [\n");
        tracker.update(load(tmp.path()));
        fs::remove_file(tmp.path().join("web.yaml")).unwrap_or_else(|e| panic!("{e}"));
        let desired = tracker.update(load(tmp.path()));
        assert_eq!(names(&desired.tasks), vec!["db"]);
        // And it does not come back if a file of that name reappears broken.
        write(tmp.path(), "web.yaml", "image: [\n");
        let desired = tracker.update(load(tmp.path()));
        assert_eq!(names(&desired.tasks), vec!["db"]);
        assert_eq!(
            desired.protected_files,
            BTreeSet::from(["web.yaml".to_string()])
        );
    }

    #[test]
    fn a_file_broken_since_startup_is_protected() {
        let tmp = tempdir();
        write(tmp.path(), "web.yaml", "image: [\n");
        let desired = DesiredTracker::new().update(load(tmp.path()));
        assert!(desired.tasks.is_empty());
        assert_eq!(
            desired.protected_files,
            BTreeSet::from(["web.yaml".to_string()])
        );
    }

    #[test]
    fn a_good_file_wins_over_the_last_good_version_of_a_broken_one() {
        let tmp = tempdir();
        let mut tracker = DesiredTracker::new();
        write(tmp.path(), "a.yaml", "name: web\nimage: old\n");
        tracker.update(load(tmp.path()));
        // The task moves to b.yaml while a.yaml breaks.
        write(tmp.path(), "a.yaml", "name: web\nimage: [\n");
        write(tmp.path(), "b.yaml", "name: web\nimage: new\n");
        let desired = tracker.update(load(tmp.path()));
        assert_eq!(desired.tasks["web"].manifest.image, "new");
        assert_eq!(desired.tasks["web"].file, "b.yaml");
    }

    #[test]
    fn a_duplicate_added_next_to_a_running_task_keeps_the_running_one() {
        let tmp = tempdir();
        let mut tracker = DesiredTracker::new();
        write(tmp.path(), "a.yaml", "name: web\nimage: x\n");
        tracker.update(load(tmp.path()));
        write(tmp.path(), "b.yaml", "name: web\nimage: y\n");
        let desired = tracker.update(load(tmp.path()));
        assert_eq!(desired.tasks["web"].file, "a.yaml");
        assert_eq!(desired.tasks["web"].manifest.image, "x");
        assert_eq!(
            desired.protected_files,
            BTreeSet::from(["b.yaml".to_string()])
        );
        assert_eq!(desired.errors.len(), 2);
    }

    #[test]
    fn renaming_a_file_changes_only_the_file_of_its_tasks() {
        let tmp = tempdir();
        let mut tracker = DesiredTracker::new();
        write(tmp.path(), "web.yaml", "name: web\nimage: nginx\n");
        let before = tracker.update(load(tmp.path()));
        fs::rename(tmp.path().join("web.yaml"), tmp.path().join("site.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
        let after = tracker.update(load(tmp.path()));
        let (mut b, a) = (before.tasks["web"].clone(), after.tasks["web"].clone());
        assert_eq!(a.file, "site.yaml");
        b.file = a.file.clone();
        assert_eq!(a, b);
    }

    #[test]
    fn validate_paths_checks_files_and_folders() {
        let tmp = tempdir();
        let dir = tmp.path().join("m");
        fs::create_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
        write(&dir, "a.yaml", "name: web\nimage: x\n");
        write(&dir, "b.yaml", "name: web\nimage: x\n");
        write(tmp.path(), "one.yaml", "image: x\nimgae: y\n");
        write(tmp.path(), "ok.yaml", "image: x\n");
        let errors = validate_paths(
            &[
                dir.clone(),
                tmp.path().join("one.yaml"),
                tmp.path().join("ok.yaml"),
            ],
            &ctx(),
        );
        let files: Vec<String> = errors.iter().map(|e| e.file.clone()).collect();
        assert_eq!(
            files,
            vec![
                dir.join("a.yaml").display().to_string(),
                dir.join("b.yaml").display().to_string(),
                tmp.path().join("one.yaml").display().to_string(),
            ]
        );
        assert!(validate_paths(&[tmp.path().join("ok.yaml")], &ctx()).is_empty());
        let missing = validate_paths(&[tmp.path().join("nope.yaml")], &ctx());
        assert_eq!(missing.len(), 1);
    }

    fn load_cached(dir: &Path, ctx: &ValidationContext, cache: &mut ParseCache) -> LoadedFolder {
        load_folder_cached(dir, ctx, "edge-1", cache).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_cached_load_parses_only_changed_files_and_equals_a_fresh_load() {
        let tmp = tempdir();
        let dir = tmp.path();
        write(dir, "a.yaml", "image: x\n");
        write(dir, "b.yaml", "image: x\nenv: {V: \"1\"}\n");
        write(dir, "broken.yaml", "image: x\nimgae: y\n");
        let fresh = |dir: &Path| load_on(dir, &ctx(), "edge-1");
        let mut cache = ParseCache::default();

        let first = load_cached(dir, &ctx(), &mut cache);
        assert_eq!(first, fresh(dir));
        assert_eq!((cache.parsed_last(), cache.len()), (3, 3));
        assert!(first.failed_files.contains("broken.yaml"));

        let again = load_cached(dir, &ctx(), &mut cache);
        assert_eq!(again, first);
        assert_eq!(cache.parsed_last(), 0, "nothing changed: nothing parsed");

        write(dir, "b.yaml", "image: x\nenv: {V: \"2\"}\n");
        fs::remove_file(dir.join("broken.yaml")).unwrap();
        let third = load_cached(dir, &ctx(), &mut cache);
        assert_eq!(third, fresh(dir));
        assert_eq!(third.tasks["b"].manifest.env.len(), 1);
        assert!(third.errors.is_empty(), "{:?}", third.errors);
        assert_eq!(
            (cache.parsed_last(), cache.len()),
            (1, 2),
            "only b.yaml parsed; the deleted file forgotten"
        );
    }

    #[test]
    fn a_cached_parse_is_checked_again_against_the_host_and_the_agent() {
        let tmp = tempdir();
        let www = tmp.path().join("www");
        fs::create_dir_all(www.join("site")).unwrap();
        let dir = tmp.path().join("m");
        fs::create_dir(&dir).unwrap();
        write(
            &dir,
            "web.yaml",
            &format!(
                "image: x\nselect: {{meta.role: gateway}}\nvolumes: [\"{}/site:/site\"]\n",
                www.display()
            ),
        );
        let gateway = ValidationContext {
            allowed_volumes: Some(vec![www.display().to_string()]),
            ..agent("gateway")
        };
        let mut cache = ParseCache::default();
        let ok = load_cached(&dir, &gateway, &mut cache);
        assert!(ok.errors.is_empty(), "{:?}", ok.errors);
        assert!(ok.tasks.contains_key("web"));

        // The bytes are the same; the host path now leads out of the
        // allowed folder, and the next load must see it.
        fs::remove_dir(www.join("site")).unwrap();
        std::os::unix::fs::symlink("/etc", www.join("site")).unwrap();
        let escaped = load_cached(&dir, &gateway, &mut cache);
        assert_eq!(cache.parsed_last(), 0);
        assert!(escaped.tasks.is_empty());
        assert!(
            escaped
                .errors
                .iter()
                .any(|e| e.message.contains("docker.volumes.allowed")),
            "{:?}",
            escaped.errors
        );

        // And `select:` is decided by this agent's meta at each load.
        let worker = ValidationContext {
            allowed_volumes: Some(vec![www.display().to_string()]),
            ..agent("worker")
        };
        let elsewhere = load_cached(&dir, &worker, &mut cache);
        assert_eq!(cache.parsed_last(), 0);
        assert!(elsewhere.tasks.is_empty());
        assert!(elsewhere.unselected.contains_key("web"), "{elsewhere:?}");
    }

    fn agent(role: &str) -> ValidationContext {
        ValidationContext {
            meta: [("role".to_string(), role.to_string())].into(),
            ..ValidationContext::default()
        }
    }

    fn load_on(dir: &Path, ctx: &ValidationContext, hostname: &str) -> LoadedFolder {
        load_folder_on(dir, ctx, hostname).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_task_for_other_agents_is_not_selected_not_an_error_and_not_desired() {
        let tmp = tempdir();
        write(
            tmp.path(),
            "gw.yaml",
            "image: x\nselect: {meta.role: gateway}\n",
        );
        write(
            tmp.path(),
            "edge.yaml",
            "image: x\nselect: {node.hostname: edge-*}\n",
        );
        write(tmp.path(), "all.yaml", "image: x\n");

        let loaded = load_on(tmp.path(), &agent("gateway"), "edge-3");
        assert_eq!(names(&loaded.tasks), vec!["all", "edge", "gw"]);
        assert!(loaded.unselected.is_empty());

        let loaded = load_on(tmp.path(), &agent("worker"), "core-1");
        assert_eq!(names(&loaded.tasks), vec!["all"]);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert!(loaded.failed_files.is_empty());
        assert_eq!(
            loaded.unselected["gw"],
            UnselectedTask {
                name: "gw".into(),
                file: "gw.yaml".into(),
                line: 1,
                reason: "meta.role is worker, not gateway".into(),
            }
        );
        assert_eq!(
            loaded.unselected["edge"].reason,
            "node.hostname core-1 does not match edge-*"
        );
    }

    #[test]
    fn a_task_that_becomes_unselected_leaves_the_desired_set_like_a_removed_one() {
        let tmp = tempdir();
        let mut tracker = DesiredTracker::new();
        write(
            tmp.path(),
            "gw.yaml",
            "image: x\nselect: {meta.role: gateway}\n",
        );
        let before = tracker.update(load_on(tmp.path(), &agent("gateway"), "h"));
        assert_eq!(names(&before.tasks), vec!["gw"]);
        // The agent's meta changes (SIGHUP): the task is no longer for it.
        let after = tracker.update(load_on(tmp.path(), &agent("worker"), "h"));
        assert!(after.tasks.is_empty());
        assert!(after.unselected.contains_key("gw"));
        assert!(after.errors.is_empty() && after.protected_files.is_empty());
        // If the file then breaks, its last good version (no task for this
        // agent) is kept: the task does not come back.
        write(tmp.path(), "gw.yaml", "image: [\n");
        let broken = tracker.update(load_on(tmp.path(), &agent("worker"), "h"));
        assert!(broken.tasks.is_empty());
        assert!(broken.protected_files.is_empty());
    }

    #[test]
    fn task_names_are_unique_across_the_folder_whatever_select_says() {
        let tmp = tempdir();
        write(
            tmp.path(),
            "a.yaml",
            "name: web\nimage: x\nselect: {meta.role: gateway}\n",
        );
        write(
            tmp.path(),
            "b.yaml",
            "name: web\nimage: y\nselect: {meta.role: worker}\n",
        );
        let loaded = load_on(tmp.path(), &agent("worker"), "h");
        assert!(loaded.tasks.is_empty() && loaded.unselected.is_empty());
        assert_eq!(loaded.errors.len(), 2);
        assert!(loaded.errors[0].message.contains("also defined in b.yaml"));
    }

    #[test]
    fn a_dependency_cycle_fails_every_file_on_it_naming_the_other_file() {
        let tmp = tempdir();
        write(
            tmp.path(),
            "web.yaml",
            "image: x
depends_on:
  db: healthy
",
        );
        write(
            tmp.path(),
            "db.yaml",
            "# the database
image: y
depends_on: {web: started}
",
        );
        write(
            tmp.path(),
            "other.yaml",
            "image: z
",
        );
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), vec!["other"]);
        let shown: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        assert_eq!(shown.len(), 2, "{shown:#?}");
        let web = shown
            .iter()
            .find(|e| e.starts_with("web.yaml:3:3:"))
            .expect("web's entry");
        assert!(web.contains("`db` (db.yaml:2)"), "{web}");
        assert!(
            web.contains("cycle db → web → db") || web.contains("cycle web → db → web"),
            "{web}"
        );
        let db = shown
            .iter()
            .find(|e| e.starts_with("db.yaml:3:14:"))
            .expect("db's entry");
        assert!(db.contains("`web` (web.yaml:1)"), "{db}");
        assert_eq!(
            loaded.failed_files,
            BTreeSet::from(["db.yaml".to_string(), "web.yaml".to_string()])
        );
    }

    #[test]
    fn a_longer_cycle_is_reported_along_its_path_and_a_diamond_is_no_cycle() {
        let tmp = tempdir();
        write(
            tmp.path(),
            "a.yaml",
            "image: x
depends_on: {b: started, c: started}
",
        );
        write(
            tmp.path(),
            "b.yaml",
            "image: x
depends_on: {d: started}
",
        );
        write(
            tmp.path(),
            "c.yaml",
            "image: x
depends_on: {d: started}
",
        );
        write(
            tmp.path(),
            "d.yaml",
            "image: x
",
        );
        let diamond = load(tmp.path());
        assert!(diamond.errors.is_empty(), "{:?}", diamond.errors);
        write(
            tmp.path(),
            "d.yaml",
            "image: x
depends_on: {a: started}
",
        );
        let cycle = load(tmp.path());
        // a → b → d → a is reported at each of its entries; a → c → d → a
        // shares the entry d → a, and shows once that one is fixed.
        assert_eq!(cycle.errors.len(), 3, "{:?}", cycle.errors);
        assert_eq!(names(&cycle.tasks), vec!["c"]);
        assert!(cycle.errors[0]
            .message
            .starts_with("dependency cycle a → b → d → a"));
    }

    #[test]
    fn a_dependency_on_an_unknown_task_names_it_and_the_known_ones() {
        let tmp = tempdir();
        write(
            tmp.path(),
            "web.yaml",
            "image: x
depends_on: {dbb: healthy}
",
        );
        write(
            tmp.path(),
            "db.yaml",
            "image: y
",
        );
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), vec!["db"]);
        assert_eq!(loaded.errors.len(), 1);
        let e = loaded.errors[0].to_string();
        assert!(e.starts_with("web.yaml:2:14:"), "{e}");
        assert!(e.contains("`dbb`") && e.contains("tasks: db"), "{e}");
    }

    #[test]
    fn while_another_file_is_broken_an_unknown_dependency_is_not_blamed_on_the_dependent() {
        let tmp = tempdir();
        write(
            tmp.path(),
            "web.yaml",
            "image: x
depends_on: {db: healthy}
",
        );
        write(
            tmp.path(),
            "db.yaml",
            "image: [
",
        );
        let loaded = load(tmp.path());
        assert_eq!(names(&loaded.tasks), vec!["web"]);
        assert!(
            loaded.errors.iter().all(|e| e.file == "db.yaml"),
            "{:?}",
            loaded.errors
        );
    }

    #[test]
    fn completed_needs_a_job() {
        let tmp = tempdir();
        write(
            tmp.path(),
            "web.yaml",
            "image: x
depends_on: {migrate: completed, db: started}
",
        );
        write(
            tmp.path(),
            "migrate.yaml",
            "image: y
",
        );
        write(
            tmp.path(),
            "db.yaml",
            "image: y
",
        );
        let loaded = load(tmp.path());
        assert_eq!(loaded.errors.len(), 1, "{:?}", loaded.errors);
        assert!(loaded.errors[0]
            .message
            .contains("is a service, which never completes"));
        write(
            tmp.path(),
            "migrate.yaml",
            "image: y
kind: job
",
        );
        assert!(load(tmp.path()).errors.is_empty());
    }

    #[test]
    fn validate_finds_a_cycle_among_files_named_one_by_one() {
        let tmp = tempdir();
        write(
            tmp.path(),
            "web.yaml",
            "image: x
depends_on: {db: healthy, cache: started}
",
        );
        write(
            tmp.path(),
            "db.yaml",
            "image: y
depends_on: {web: started}
",
        );
        let errors = validate_paths(
            &[tmp.path().join("web.yaml"), tmp.path().join("db.yaml")],
            &ctx(),
        );
        // `cache` may live in a file not named: only the cycle is an error.
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors
            .iter()
            .all(|e| e.message.contains("dependency cycle")));
    }
}
