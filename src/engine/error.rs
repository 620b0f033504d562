//! Why an action failed: berth's own kinds over the runtime's, so the retry
//! policy can classify a failure and people can read it. Never holds a
//! secret.

use crate::runtime::RuntimeError;

/// Why an action failed. Feeds backoff, status and logs; never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error(
        "container name {name} is held by container {holder} that berth does not own; \
         remove or rename it and berth will create its own"
    )]
    NameConflict { name: String, holder: String },
    #[error("image {image} is not present locally, and the task says `pull: never`")]
    ImageNotPresent { image: String },
    #[error("cannot pull image {image}: {cause}")]
    Pull { image: String, cause: RuntimeError },
    #[error("rolled back: {cause}")]
    RolledBack { cause: Box<ApplyError> },
    /// The new container of an update did not pass its health gate.
    #[error("{reason}")]
    GateFailed { reason: String },
    /// The update's new container failed its gate and `auto_revert: false`
    /// keeps it anyway.
    #[error("update failed and kept (auto_revert is off): {reason}")]
    UpdateFailed { reason: String },
    /// The chain was called off before it changed anything (its manifest
    /// changed again while it waited for a pull).
    #[error("called off: the desired spec changed while waiting")]
    Cancelled,
}
