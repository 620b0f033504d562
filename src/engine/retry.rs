//! The one place that decides when failed work is tried again, after
//! kube-runtime's `error_policy`: deciding is a pure function of the failure
//! and the instance's history; the controller only carries the decision out.
//!
//! Three kinds of failure, three answers:
//! - Docker unreachable: not the task's fault. Retry soon, count nothing.
//! - Permanent (waiting cannot fix it: `pull: never` and no image, a name held
//!   by a container berth does not own, a create Docker refuses as invalid):
//!   `berth run` still retries on the task's curve, in case a person fixes
//!   the world; `run --once` stops waiting for it and says why.
//! - Anything else: counted on the task's restart curve.

use std::time::Duration;

use crate::engine::error::ApplyError;
use crate::manifest::RestartSpec;
use crate::runtime::RuntimeError;

/// Retry delay for work cut short because Docker was unreachable.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(1);
/// Retry delay for failed removals, stops and restores: they are not on any
/// task's restart curve.
pub const CLEANUP_RETRY: Duration = Duration::from_secs(5);
/// `run --once` gives up on an instance after this many consecutive failures
/// (a crash loop), naming the last one.
pub const ONCE_MAX_FAILURES: u32 = 3;

/// How a failure bears on its task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// Docker could not be reached.
    Unavailable,
    /// Waiting cannot fix it; a person must change something.
    Permanent,
    /// Anything else.
    Transient,
}

/// Sort a failure into its kind.
pub fn classify(error: &ApplyError) -> FailureKind {
    match error {
        ApplyError::Runtime(e) | ApplyError::Pull { cause: e, .. } => classify_runtime(e),
        ApplyError::NameConflict { .. } | ApplyError::ImageNotPresent { .. } => {
            FailureKind::Permanent
        }
        ApplyError::RolledBack { cause } => classify(cause),
        ApplyError::GateFailed { .. } | ApplyError::UpdateFailed { .. } => FailureKind::Transient,
        ApplyError::Cancelled => FailureKind::Transient,
    }
}

fn classify_runtime(error: &RuntimeError) -> FailureKind {
    match error {
        RuntimeError::Unavailable(_) => FailureKind::Unavailable,
        RuntimeError::Invalid(_) => FailureKind::Permanent,
        _ => FailureKind::Transient,
    }
}

/// The decision for one failed action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Requeue {
    /// Wait this long before the next attempt.
    pub after: Duration,
    /// Whether the failure counts on the task's restart curve.
    pub counted: bool,
    pub kind: FailureKind,
}

/// Decide the next attempt after `error`. `counts_as_attempt` is false for
/// removals, stops and restores; `failures` is the instance's count of
/// consecutive failures *before* this one.
pub fn error_policy(
    error: &ApplyError,
    counts_as_attempt: bool,
    failures: u32,
    restart: &RestartSpec,
) -> Requeue {
    let kind = classify(error);
    match kind {
        FailureKind::Unavailable => Requeue {
            after: UNAVAILABLE_RETRY,
            counted: false,
            kind,
        },
        _ if !counts_as_attempt => Requeue {
            after: CLEANUP_RETRY,
            counted: false,
            kind,
        },
        _ => Requeue {
            after: restart_delay(failures.saturating_add(1), restart),
            counted: true,
            kind,
        },
    }
}

/// The task's restart curve: the attempt after `failures` consecutive
/// failures. The first retry is immediate, then `delay`, `2×delay`,
/// `4×delay`, ... capped at `max_delay`.
pub fn restart_delay(failures: u32, timings: &RestartSpec) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    doubling(timings.delay.get(), failures - 2, timings.max_delay.get())
}

/// While Docker cannot be listed: 1 s doubling up to 30 s.
pub fn outage_delay(failures: u32) -> Duration {
    doubling(Duration::from_secs(1), failures, Duration::from_secs(30))
}

/// Re-subscribing to Docker's events: 250 ms doubling up to 10 s.
pub fn reconnect_delay(failures: u32) -> Duration {
    doubling(
        Duration::from_millis(250),
        failures,
        Duration::from_secs(10),
    )
}

/// `base × 2^exponent`, saturating long before it could overflow, capped.
fn doubling(base: Duration, exponent: u32, cap: Duration) -> Duration {
    let factor = 1u32.checked_shl(exponent.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(cap).min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::duration::Duration as D;

    fn timings() -> RestartSpec {
        RestartSpec {
            delay: D::from_millis(200),
            max_delay: D::from_secs(2),
            reset_after: D::from_secs(10),
            ..RestartSpec::default()
        }
    }

    #[test]
    fn the_first_restart_is_immediate_then_the_delay_doubles_up_to_the_cap() {
        let delays: Vec<u128> = (1..=8)
            .map(|n| restart_delay(n, &timings()).as_millis())
            .collect();
        assert_eq!(delays, vec![0, 200, 400, 800, 1600, 2000, 2000, 2000]);
        assert_eq!(restart_delay(u32::MAX, &timings()), Duration::from_secs(2));
    }

    #[test]
    fn docker_being_away_is_retried_soon_and_never_counted() {
        let e = ApplyError::Runtime(RuntimeError::Unavailable("refused".into()));
        let r = error_policy(&e, true, 7, &timings());
        assert_eq!(r.after, UNAVAILABLE_RETRY);
        assert!(!r.counted);
        assert_eq!(r.kind, FailureKind::Unavailable);
    }

    #[test]
    fn a_failed_removal_is_retried_on_its_own_clock() {
        let e = ApplyError::Runtime(RuntimeError::Other("busy".into()));
        let r = error_policy(&e, false, 0, &timings());
        assert_eq!(r.after, CLEANUP_RETRY);
        assert!(!r.counted);
    }

    #[test]
    fn a_failed_start_follows_the_restart_curve() {
        let e = ApplyError::Runtime(RuntimeError::Other("exec failed".into()));
        assert_eq!(error_policy(&e, true, 0, &timings()).after, Duration::ZERO);
        let r = error_policy(&e, true, 2, &timings());
        assert_eq!(r.after, Duration::from_millis(400));
        assert!(r.counted);
        assert_eq!(r.kind, FailureKind::Transient);
    }

    #[test]
    fn errors_waiting_cannot_fix_are_permanent() {
        let permanent = [
            ApplyError::ImageNotPresent {
                image: "ghost:1".into(),
            },
            ApplyError::NameConflict {
                name: "berth-web-0".into(),
                holder: "abc".into(),
            },
            ApplyError::Runtime(RuntimeError::Invalid("conflicting options".into())),
            ApplyError::Pull {
                image: "Bad:Ref".into(),
                cause: RuntimeError::Invalid("invalid reference format".into()),
            },
            ApplyError::RolledBack {
                cause: Box::new(ApplyError::Runtime(RuntimeError::Invalid("x".into()))),
            },
        ];
        for e in &permanent {
            assert_eq!(classify(e), FailureKind::Permanent, "{e}");
        }
        let transient = ApplyError::Pull {
            image: "a:1".into(),
            cause: RuntimeError::NotFound("manifest unknown".into()),
        };
        assert_eq!(classify(&transient), FailureKind::Transient);
    }

    #[test]
    fn outage_and_reconnect_delays_grow_and_are_capped() {
        assert_eq!(outage_delay(0), Duration::from_secs(1));
        assert_eq!(outage_delay(3), Duration::from_secs(8));
        assert_eq!(outage_delay(40), Duration::from_secs(30));
        assert_eq!(reconnect_delay(0), Duration::from_millis(250));
        assert_eq!(reconnect_delay(2), Duration::from_secs(1));
        assert_eq!(reconnect_delay(40), Duration::from_secs(10));
    }
}
