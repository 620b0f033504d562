//! berth: a reconciling controller for Docker.
//!
//! # Layout
//!
//! - [`manifest`]: the YAML task format; parsing with file:line:column errors; validation.
//! - [`desired`]: the manifest folder → the desired set of tasks, with per-file errors.
//! - [`resolve`]: one task instance → the exact [`spec::ContainerSpec`] Docker is asked for.
//! - [`spec`]: the resolved spec, its canonical hash, berth's labels and names.
//! - [`runtime`]: the narrow [`runtime::ContainerRuntime`] trait, over bollard or in memory.
//! - [`engine`]: plan (pure), backoff, retry policy, per-instance work, pulls, status.
//! - [`agent`]: `berth run`'s loop: triggers, signals, coalescing, heartbeat.
//! - [`trigger`]: why the loop looks again, one type for every source.
//! - [`clock`]: the wall clock, injectable for tests under paused time.
//! - [`events`]: Docker events → triggers, reconnecting when the daemon goes away.
//! - [`ports`]: host port allocation, stable per (task, index, label).
//! - [`registry`]: which registry credentials a pull uses (task `auth`, agent `auth_config`).
//! - [`config`]: the agent config.
//! - [`watch`]: the manifest folder's file-system activity → debounced triggers.
//! - [`http`]: `/healthz`, `/metrics`, `/v1/status` on `listen`.
//! - [`metrics`]: the Prometheus metrics, fed by each pass.
//! - [`applied`]: the secret-free record of the applied spec (a label) and field diffs.
//! - [`notify`]: systemd's sd_notify (READY, WATCHDOG) without a crate.
//! - [`status_client`]: `berth status`'s tiny HTTP client for `/v1/status`.
//! - [`source`]: GitOps: the manifests from a git repository, fetched, verified, switched atomically.
#![forbid(unsafe_code)]

pub mod agent;
pub mod applied;
pub mod clock;
pub mod config;
pub mod desired;
pub mod engine;
pub mod events;
pub mod http;
pub mod manifest;
pub mod metrics;
pub mod notify;
pub mod ports;
pub mod registry;
pub mod resolve;
pub mod runtime;
pub mod source;
pub mod spec;
pub mod status_client;
pub mod trigger;
pub mod watch;
