//! berth: a reconciling controller for Docker.
//!
//! # Layout
//!
//! - [`manifest`]: the YAML task format; parsing with file:line:column errors; validation.
//! - [`desired`]: the manifest folder → the desired set of tasks, with per-file errors.
//! - [`resolve`]: one task instance → the exact [`spec::ContainerSpec`] Docker is asked for.
//! - [`spec`]: the resolved spec, its canonical hash, berth's labels and names.
//! - [`runtime`]: the narrow [`runtime::ContainerRuntime`] trait, over bollard or in memory.
//! - [`plan`]: the pure diff (desired, observed, backoff, now) → ordered actions.
//! - [`backoff`]: per-instance restart state; pure, time passed in.
//! - [`apply`]: carries out a plan with bounded concurrency, tolerating a changed world.
//! - [`controller`]: the loop: triggers → pass (load, list, plan, apply).
//! - [`config`]: the agent config.
#![forbid(unsafe_code)]

pub mod config;
pub mod desired;
pub mod manifest;
pub mod runtime;
pub mod spec;
