//! The engine: deciding (pure) and doing (effectful), kept apart.
//!
//! - [`plan`]: the pure diff (desired, observed, memory, now) → actions.
//! - [`backoff`]: per-instance restart state; pure, time passed in.
//! - [`retry`]: the one decision of when failed work is tried again.
//! - [`error`]: why an action failed, in kinds the retry policy can sort.
//! - [`apply`]: runs one instance's chain of actions against the runtime.
//! - [`pulls`]: one background pull per image, shared, with progress.
//! - [`controller`]: a pass (load, list, plan) and the workers it dispatches.
//! - [`cleanup`]: images nothing uses any more after removals.
//! - [`holds`]: held updates, kept across restarts in the state directory.
//! - [`deps`]: `depends_on`: what a task waits for, and removal order.
//! - [`jobs`]: tasks that run to completion, their attempts and schedules.
//! - [`status`]: what status, metrics and systemd see, live work included.
//! - [`trigger`]: why a pass runs, one type for every source.

pub mod apply;
pub mod backoff;
pub mod cleanup;
pub mod controller;
pub mod deps;
pub mod error;
pub mod holds;
pub mod jobs;
pub mod plan;
pub mod pulls;
pub mod retry;
pub mod status;
pub mod trigger;
