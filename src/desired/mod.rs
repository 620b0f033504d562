//! From the manifest folder to exactly what Docker is asked for.
//!
//! - [`folder`]: the folder → tasks, with per-file errors; a broken file
//!   keeps its last good tasks.
//! - [`ports`]: host port allocation, stable per (task, index, label).
//! - [`registry`]: which registry credentials a pull uses.
//! - [`resolve`]: one task instance → its [`spec::ContainerSpec`].
//! - [`spec`]: the resolved spec and its canonical hash.
//! - [`state`]: every resolved instance the folder asks for, as the planner takes it.
//! - [`labels`]: the labels a container gets (the manifest's, then berth's).
//! - [`applied`]: the secret-free record of an applied spec, and field diffs.
//! - [`digest_key`]: the host's key for every digest of a secret value.

pub mod applied;
pub mod digest_key;
pub mod folder;
pub mod labels;
pub mod ports;
pub mod registry;
pub mod resolve;
pub mod spec;
pub mod state;
