//! Carrying out a plan against a runtime.
//!
//! Apply never trusts the observation the plan was made from: the world may
//! have moved in between. 404 on a stop or remove means "already gone", 304
//! means "already in that state", and 409 on create means "look at who holds
//! the name": adopt it when it is ours with the right spec, report a name
//! conflict when it is not ours (and never touch it).
//!
//! Actions for one instance form a chain that runs in order; chains of
//! different instances run concurrently, at most `parallelism` at a time.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::{self, StreamExt};
use tracing::{debug, info, warn};

use crate::manifest::PullPolicy;
use crate::plan::{aside_name, Action, DesiredInstance};
use crate::runtime::{ContainerRuntime, CreateRequest, RuntimeError};
use crate::spec::InstanceKey;

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
    #[error("image {image}: {message}")]
    Image { image: String, message: String },
    #[error("replacement failed ({cause}); the previous container was put back")]
    RolledBack { cause: Box<ApplyError> },
}

impl ApplyError {
    /// Docker itself is unreachable: not the task's fault, so not a task failure.
    pub fn is_unavailable(&self) -> bool {
        match self {
            ApplyError::Runtime(RuntimeError::Unavailable(_)) => true,
            ApplyError::RolledBack { cause } => cause.is_unavailable(),
            _ => false,
        }
    }
}

/// The result of one action.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub key: InstanceKey,
    pub verb: &'static str,
    /// The action counts as a failure of the task when it fails (creates,
    /// starts, restarts, replacements), as opposed to removals.
    pub counts_as_attempt: bool,
    pub result: Result<(), ApplyError>,
}

/// Settings apply needs besides the plan.
#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub namespace: String,
    pub parallelism: usize,
}

/// One pull per image at a time, however many tasks need it (after Nomad's
/// coordinator): the second caller waits, then finds the image present.
#[derive(Default)]
pub struct ImageLocks {
    locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl ImageLocks {
    fn lock_for(&self, image: &str) -> Arc<tokio::sync::Mutex<()>> {
        match self.locks.lock() {
            Ok(mut map) => map.entry(image.to_string()).or_default().clone(),
            // A poisoned map only costs the de-duplication, never correctness.
            Err(_) => Arc::default(),
        }
    }
}

/// Apply a plan. Outcomes come back in plan order.
pub async fn apply<R: ContainerRuntime>(
    runtime: &R,
    actions: Vec<Action>,
    options: &ApplyOptions,
    images: &ImageLocks,
) -> Vec<Outcome> {
    // Group into per-instance chains, keeping the plan's order within each.
    let mut chains: BTreeMap<InstanceKey, Vec<(usize, Action)>> = BTreeMap::new();
    for (i, action) in actions.into_iter().enumerate() {
        chains
            .entry(action.key().clone())
            .or_default()
            .push((i, action));
    }
    let results: Vec<Vec<(usize, Outcome)>> = stream::iter(chains.into_values())
        .map(|chain| run_chain(runtime, chain, options, images))
        .buffer_unordered(options.parallelism.max(1))
        .collect()
        .await;
    let mut outcomes: Vec<(usize, Outcome)> = results.into_iter().flatten().collect();
    outcomes.sort_by_key(|(i, _)| *i);
    outcomes.into_iter().map(|(_, o)| o).collect()
}

async fn run_chain<R: ContainerRuntime>(
    runtime: &R,
    chain: Vec<(usize, Action)>,
    options: &ApplyOptions,
    images: &ImageLocks,
) -> Vec<(usize, Outcome)> {
    let mut out = Vec::with_capacity(chain.len());
    for (i, action) in chain {
        let key = action.key().clone();
        let verb = action.verb();
        let counts_as_attempt = !matches!(
            action,
            Action::Remove { .. } | Action::Stop { .. } | Action::Restore { .. }
        );
        let result = run_action(runtime, &action, options, images).await;
        match &result {
            Ok(()) => info!(task = %key.task, index = key.index, action = verb, "{action}: done"),
            Err(e) => {
                warn!(task = %key.task, index = key.index, action = verb, error = %e, "{action}: failed")
            }
        }
        let failed = result.is_err();
        out.push((
            i,
            Outcome {
                key,
                verb,
                counts_as_attempt,
                result,
            },
        ));
        // Later steps of a chain assume the earlier ones happened.
        if failed {
            break;
        }
    }
    out
}

/// Treat "already in that state" and "already gone" as success.
fn tolerate(
    result: Result<(), RuntimeError>,
    tolerated: &[fn(&RuntimeError) -> bool],
) -> Result<(), RuntimeError> {
    match result {
        Err(e) if tolerated.iter().any(|t| t(&e)) => Ok(()),
        other => other,
    }
}

fn not_modified(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::NotModified)
}
fn not_found(e: &RuntimeError) -> bool {
    matches!(e, RuntimeError::NotFound(_))
}

/// Test hook: `BERTH_TEST_CRASH_AT=<point>` aborts the process at that point,
/// exactly like `kill -9`, so tests can prove a replacement is crash-safe.
/// Points: `replace:after-stop`, `replace:after-rename`, `after-create` (any
/// create, before its start), `replace:after-start`.
fn crash_point(point: &str) {
    if std::env::var("BERTH_TEST_CRASH_AT").is_ok_and(|p| p == point) {
        eprintln!("berth: BERTH_TEST_CRASH_AT={point}: aborting");
        std::process::abort();
    }
}

async fn run_action<R: ContainerRuntime>(
    runtime: &R,
    action: &Action,
    options: &ApplyOptions,
    images: &ImageLocks,
) -> Result<(), ApplyError> {
    let ns = options.namespace.as_str();
    match action {
        Action::Create { desired } => {
            ensure_image(runtime, desired, images).await?;
            create_and_start(runtime, desired, ns).await
        }
        Action::Start { id, .. } => Ok(tolerate(runtime.start(id).await, &[not_modified])?),
        Action::Restart { id, desired } => {
            tolerate(runtime.stop(id, desired.stop_grace).await, &[not_modified])?;
            Ok(tolerate(runtime.start(id).await, &[not_modified])?)
        }
        Action::Replace {
            old_id,
            old_running,
            desired,
            ..
        } => replace(runtime, old_id, *old_running, desired, ns, images).await,
        Action::Restore {
            id, canonical_name, ..
        } => {
            match runtime.rename(id, canonical_name).await {
                Err(RuntimeError::Conflict(_)) => {
                    // Someone took the canonical name meanwhile. If it is ours,
                    // the next pass sees both and removes the leftover.
                    let holder = runtime.inspect(canonical_name).await?;
                    if holder.namespace() != Some(ns) {
                        return Err(ApplyError::NameConflict {
                            name: canonical_name.clone(),
                            holder: holder.id.chars().take(12).collect(),
                        });
                    }
                    return Ok(());
                }
                Err(RuntimeError::NotFound(_)) => return Ok(()),
                other => other?,
            }
            Ok(tolerate(runtime.start(id).await, &[not_modified])?)
        }
        Action::Remove { id, grace, .. } => {
            tolerate(runtime.stop(id, *grace).await, &[not_modified, not_found])?;
            Ok(tolerate(runtime.remove(id).await, &[not_found])?)
        }
        Action::Stop { id, grace, .. } => Ok(tolerate(
            runtime.stop(id, *grace).await,
            &[not_modified, not_found],
        )?),
    }
}

/// Make sure the image is present according to the pull policy.
pub async fn ensure_image<R: ContainerRuntime>(
    runtime: &R,
    desired: &DesiredInstance,
    images: &ImageLocks,
) -> Result<(), ApplyError> {
    let image = desired.spec.image.as_str();
    // Docker being away stays `Unavailable`, so it is not held against the task.
    let image_err = |e: RuntimeError| match e {
        RuntimeError::Unavailable(_) => ApplyError::Runtime(e),
        e => ApplyError::Image {
            image: image.to_string(),
            message: e.to_string(),
        },
    };
    let lock = images.lock_for(image);
    let _guard = lock.lock().await;
    let present = runtime.image_present(image).await.map_err(image_err)?;
    match desired.pull {
        PullPolicy::Never if !present => Err(ApplyError::Image {
            image: image.to_string(),
            message: "not present locally, and the task says `pull: never`".into(),
        }),
        PullPolicy::Never => Ok(()),
        PullPolicy::Missing if present => Ok(()),
        PullPolicy::Missing | PullPolicy::Always => {
            info!(image, "pulling image");
            runtime
                .pull(image, desired.credentials.as_ref())
                .await
                .map_err(image_err)
        }
    }
}

/// Create the canonical container and start it. A taken name is resolved by
/// looking at the holder (DESIGN.md: 409 → inspect, adopt if ours).
async fn create_and_start<R: ContainerRuntime>(
    runtime: &R,
    desired: &DesiredInstance,
    ns: &str,
) -> Result<(), ApplyError> {
    let name = desired.key.container_name(ns);
    let labels = desired
        .spec
        .container_labels(ns, &desired.key, &desired.manifest);
    let request = CreateRequest {
        name: &name,
        spec: &desired.spec,
        labels: &labels,
    };
    let id = match runtime.create(request).await {
        Ok(id) => id,
        Err(RuntimeError::Conflict(message)) => {
            let holder = match runtime.inspect(&name).await {
                Ok(holder) => holder,
                // Gone between create and inspect: the next pass creates it.
                Err(RuntimeError::NotFound(_)) => {
                    return Err(RuntimeError::Conflict(message).into())
                }
                Err(e) => return Err(e.into()),
            };
            if holder.namespace() != Some(ns) || holder.key().as_ref() != Some(&desired.key) {
                return Err(ApplyError::NameConflict {
                    name,
                    holder: holder.id.chars().take(12).collect(),
                });
            }
            if holder.spec_hash() != Some(desired.hash.as_str()) {
                // Ours but outdated (created since we listed): the next pass replaces it.
                return Err(RuntimeError::Conflict(message).into());
            }
            debug!(container = %name, "adopting a container of ours that already has this spec");
            holder.id
        }
        Err(e) => return Err(e.into()),
    };
    crash_point("after-create");
    Ok(tolerate(runtime.start(&id).await, &[not_modified])?)
}

/// Swap `old_id` for a container of the new spec without ever running two
/// at once, and so that a crash at any step leaves something the next pass
/// recognises: stop old → rename old aside → create new → start new →
/// remove old. If the new container cannot be created or started, the old
/// one is renamed back and started again.
async fn replace<R: ContainerRuntime>(
    runtime: &R,
    old_id: &str,
    old_running: bool,
    desired: &DesiredInstance,
    ns: &str,
    images: &ImageLocks,
) -> Result<(), ApplyError> {
    // Pull before stopping anything: a registry outage must cost no running work.
    ensure_image(runtime, desired, images).await?;

    let canonical = desired.key.container_name(ns);
    match runtime.stop(old_id, desired.stop_grace).await {
        Ok(()) | Err(RuntimeError::NotModified) => {}
        Err(RuntimeError::NotFound(_)) => return create_and_start(runtime, desired, ns).await,
        Err(e) => return Err(e.into()),
    }
    crash_point("replace:after-stop");
    let aside = aside_name(&canonical, old_id);
    match runtime.rename(old_id, &aside).await {
        Ok(()) => {}
        Err(RuntimeError::NotFound(_)) => return create_and_start(runtime, desired, ns).await,
        Err(e) => {
            // Could not move it aside: put it back as it was.
            if old_running {
                let _ = runtime.start(old_id).await;
            }
            return Err(e.into());
        }
    }
    crash_point("replace:after-rename");

    if let Err(cause) = create_and_start(runtime, desired, ns).await {
        warn!(container = %canonical, error = %cause, "new container failed; restoring the previous one");
        if let Ok(new) = runtime.inspect(&canonical).await {
            if new.id != old_id && new.namespace() == Some(ns) {
                let _ = runtime.remove(&new.id).await;
            }
        }
        runtime.rename(old_id, &canonical).await?;
        if old_running {
            tolerate(runtime.start(old_id).await, &[not_modified])?;
        }
        return Err(ApplyError::RolledBack {
            cause: Box::new(cause),
        });
    }
    crash_point("replace:after-start");

    // The old container is stopped and aside; failing to remove it now only
    // leaves a leftover the next pass removes.
    if let Err(e) = tolerate(runtime.remove(old_id).await, &[not_found]) {
        warn!(container = %aside, error = %e, "could not remove the replaced container; the next pass will");
    }
    Ok(())
}

/// How long to wait for a stop when nothing better is known.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
