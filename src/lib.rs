//! berth: a reconciling controller for Docker.
//!
//! # Layout
//!
//! Folders by role; within each, one concern per file.
//!
//! - [`manifest`]: the YAML task format: types, parsing with
//!   file:line:column errors, validation (with the agent's gates),
//!   interpolation, selectors, cron schedules, the files a manifest may
//!   read, schema.
//! - [`desired`]: the manifest folder → exactly what Docker is asked for:
//!   loading with per-file errors and last-good memory, port allocation,
//!   registry credentials, resolving an instance into a [`desired::spec::ContainerSpec`],
//!   its label set and its secret-free applied record, keyed by the host's
//!   digest key.
//! - [`engine`]: deciding (the pure [`engine::plan`], dependencies, jobs,
//!   backoff, the retry policy) and doing (per-instance chains, shared background pulls, the
//!   controller's pass, image cleanup), and the status it publishes.
//! - [`runtime`]: the narrow [`runtime::ContainerRuntime`] trait, over Docker
//!   (bollard, split by concern) or in memory for tests.
//! - [`agent`]: `berth run`'s loop and `run --once`: triggers, the folder
//!   watch, the git source's polling task, Docker events, signals,
//!   heartbeat and systemd notification.
//! - [`source`]: manifests from a git repository (GitOps).
//! - [`faces`]: what people and machines see: HTTP endpoints, metrics,
//!   rendering of status and plans, pull progress.
//! - [`names`]: instance identity, container names, label keys and the
//!   default stop grace: the vocabulary every layer shares.
//! - [`config`]: the agent config. [`clock`]: the injectable wall clock.
//!   [`node`]: this host's name and address.
//! - [`logging`]: log level, format, colour, timestamps, and the cap that
//!   keeps the Docker and HTTP client libraries from logging bodies.
//!
//! The `berth` binary (`src/main.rs` and `src/cli/`) only parses flags and
//! wires these parts; every behaviour lives here. Imports go one way:
//! `names`/`node`/`clock` ← `manifest` ← `source` ← `config` ← `desired` ←
//! `runtime` ← `engine` ← `agent`, `faces` (ARCHITECTURE.md has the map).
#![forbid(unsafe_code)]

pub mod agent;
pub mod clock;
pub mod config;
pub mod desired;
pub mod engine;
pub mod faces;
pub mod logging;
pub mod manifest;
pub mod names;
pub mod node;
pub mod runtime;
pub mod source;
