//! The wall clock, injected so timing logic can be tested with tokio's
//! paused time instead of sleeping.
//!
//! Warning: berth compares its "now" with Docker's timestamps (when a
//! container started or exited), which are wall-clock times. In production
//! the clock must therefore be [`Clock::System`]: a clock derived from a
//! monotonic instant would drift from Docker's when the wall clock jumps
//! (an edge host without a battery-backed clock sets its time after boot).

use std::time::SystemTime;

#[derive(Debug, Clone, Copy, Default)]
pub enum Clock {
    /// `SystemTime::now()`.
    #[default]
    System,
    /// Follows tokio's clock (pausable, advanced by `tokio::time::advance`),
    /// starting at `anchor`. For tests.
    Tokio {
        anchor: SystemTime,
        at: tokio::time::Instant,
    },
}

impl Clock {
    /// A clock that follows tokio's (paused) time, starting at the current
    /// wall-clock time. Call it inside the runtime whose time it follows.
    pub fn tokio() -> Clock {
        Clock::Tokio {
            anchor: SystemTime::now(),
            at: tokio::time::Instant::now(),
        }
    }

    pub fn now(&self) -> SystemTime {
        match self {
            Clock::System => SystemTime::now(),
            Clock::Tokio { anchor, at } => *anchor + at.elapsed(),
        }
    }
}
