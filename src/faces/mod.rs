//! What people and machines see of berth.
//!
//! - [`http`]: `/healthz`, `/metrics`, `/v1/status` on `listen`.
//! - [`metrics`]: the Prometheus metrics.
//! - [`progress`]: pull progress bars on a terminal, logs printed above them.
//! - [`render`]: status tables and plans as text and JSON.
//! - [`status_client`]: `berth status`'s tiny HTTP client for `/v1/status`.

pub mod http;
pub mod metrics;
pub mod progress;
pub mod render;
pub mod status_client;
