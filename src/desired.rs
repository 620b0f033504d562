// TEMPORARY STUB (lead): replaced by the manifest branch's desired.rs.
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use crate::manifest::parse::ManifestError;
use crate::manifest::validate::ValidationContext;
use crate::manifest::TaskManifest;
#[derive(Debug, Clone, PartialEq)]
pub struct TaskDef { pub name: String, pub file: String, pub line: u64, pub manifest: TaskManifest }
pub struct LoadedFolder { pub tasks: BTreeMap<String, TaskDef>, pub errors: Vec<ManifestError>, pub failed_files: BTreeSet<String>, pub files: BTreeSet<String> }
#[derive(Debug, thiserror::Error)]
#[error("folder")]
pub struct FolderError;
pub fn load_folder(_dir: &Path, _ctx: &ValidationContext) -> Result<LoadedFolder, FolderError> { Err(FolderError) }
#[derive(Default)]
pub struct DesiredTracker;
pub struct DesiredSet { pub tasks: BTreeMap<String, TaskDef>, pub errors: Vec<ManifestError>, pub protected_files: BTreeSet<String> }
impl DesiredTracker { pub fn update(&mut self, l: LoadedFolder) -> DesiredSet { DesiredSet { tasks: l.tasks, errors: l.errors, protected_files: BTreeSet::new() } } }
pub fn validate_paths(_p: &[PathBuf], _c: &ValidationContext) -> Vec<ManifestError> { vec![] }
