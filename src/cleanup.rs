//! Image cleanup (`docker.cleanup.image`): after a pass removed containers,
//! remove the images they ran that no berth task uses any more.
//!
//! The state is only this pass's: the images of the containers it removed
//! (or replaced), minus every image a task of the folder names (held tasks
//! included), minus every
//! image a container of ours that is still there runs. Removal is never
//! forced, so Docker itself keeps an image any other container (ours or
//! foreign, running or not) still uses: that `Conflict` is expected and kept
//! quiet.

use std::collections::{BTreeMap, BTreeSet};

use tracing::{debug, info, warn};

use crate::apply::Outcome;
use crate::plan::{Action, DesiredState};
use crate::runtime::{ContainerRuntime, ObservedContainer, RuntimeError};
use crate::spec::InstanceKey;

/// The container ids this pass's actions removed for good: successful
/// `Remove`s and the old side of successful `Replace`s.
///
/// Apply runs one chain per instance and stops a chain at its first failure,
/// and returns outcomes in plan order; so the n-th outcome of an instance
/// belongs to the n-th action of that instance.
pub fn removed_container_ids(actions: &[Action], outcomes: &[Outcome]) -> BTreeSet<String> {
    let mut by_key: BTreeMap<&InstanceKey, Vec<&Outcome>> = BTreeMap::new();
    for o in outcomes {
        by_key.entry(&o.key).or_default().push(o);
    }
    let mut seen: BTreeMap<&InstanceKey, usize> = BTreeMap::new();
    let mut removed = BTreeSet::new();
    for action in actions {
        let key = action.key();
        let n = seen.entry(key).or_default();
        let outcome = by_key.get(key).and_then(|v| v.get(*n));
        *n += 1;
        let Some(outcome) = outcome else { continue };
        if outcome.result.is_err() {
            continue;
        }
        match action {
            Action::Remove { id, .. } => {
                removed.insert(id.clone());
            }
            Action::Replace { old_id, .. } => {
                removed.insert(old_id.clone());
            }
            _ => {}
        }
    }
    removed
}

/// Images to try removing: those of the removed containers that no desired
/// instance and no remaining container of ours uses.
pub fn unused_images(
    removed_ids: &BTreeSet<String>,
    observed: &[ObservedContainer],
    desired: &DesiredState,
) -> BTreeSet<String> {
    let candidates: BTreeSet<&str> = observed
        .iter()
        .filter(|c| removed_ids.contains(&c.id))
        .map(|c| c.image.as_str())
        .filter(|i| !i.is_empty())
        .collect();
    let in_use: BTreeSet<&str> = desired
        .images
        .iter()
        .map(String::as_str)
        .chain(
            observed
                .iter()
                .filter(|c| !removed_ids.contains(&c.id))
                .map(|c| c.image.as_str()),
        )
        .collect();
    candidates
        .difference(&in_use)
        .map(|s| s.to_string())
        .collect()
}

/// Remove the images this pass left unused; returns the ones removed.
/// Never fails the pass: an image still in use (`Conflict`) or already gone
/// is fine, anything else is logged.
pub async fn remove_unused_images<R: ContainerRuntime>(
    runtime: &R,
    actions: &[Action],
    outcomes: &[Outcome],
    observed: &[ObservedContainer],
    desired: &DesiredState,
) -> Vec<String> {
    let removed_ids = removed_container_ids(actions, outcomes);
    if removed_ids.is_empty() {
        return Vec::new();
    }
    let mut removed = Vec::new();
    for image in unused_images(&removed_ids, observed, desired) {
        match runtime.remove_image(&image).await {
            Ok(()) => {
                info!(image = %image, action = "remove-image", "removed an image no task uses any more");
                removed.push(image);
            }
            Err(RuntimeError::Conflict(why)) => {
                debug!(image = %image, %why, "image still in use; keeping it");
            }
            Err(RuntimeError::NotFound(_)) => {}
            Err(e) => warn!(image = %image, error = %e, "could not remove an unused image"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{apply, ApplyOptions, ImageLocks};
    use crate::plan::{DesiredInstance, RemoveReason};
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerState, CreateRequest, Health};
    use crate::spec::{labels, ContainerSpec};
    use std::sync::Arc;
    use std::time::Duration;

    fn spec(image: &str) -> ContainerSpec {
        ContainerSpec::for_image(image)
    }

    async fn run_ours(rt: &FakeRuntime, task: &str, image: &str) -> String {
        rt.add_image(image);
        let key = InstanceKey::new(task, 0);
        let s = spec(image);
        let labels = s.container_labels("ns", &key, &format!("{task}.yaml"));
        let id = rt
            .create(CreateRequest {
                name: &key.container_name("ns"),
                spec: &s,
                labels: &labels,
            })
            .await
            .unwrap();
        rt.start(&id).await.unwrap();
        id
    }

    fn remove_action(task: &str, id: &str) -> Action {
        Action::Remove {
            key: InstanceKey::new(task, 0),
            id: id.into(),
            name: format!("ns-{task}-0"),
            reason: RemoveReason::TaskRemoved,
            grace: Duration::from_secs(1),
        }
    }

    #[tokio::test]
    async fn the_image_of_a_deleted_task_goes_but_images_still_used_stay() {
        let rt = FakeRuntime::new();
        // gone: its only user is removed. shared: also run by `keep`.
        // foreign: also run by a container berth does not own.
        // wanted: named by a desired instance that has no container yet.
        let gone = run_ours(&rt, "gone", "img:gone").await;
        let shared_old = run_ours(&rt, "old", "img:shared").await;
        run_ours(&rt, "keep", "img:shared").await;
        let foreign_user = run_ours(&rt, "f", "img:foreign").await;
        let wanted_old = run_ours(&rt, "w", "img:wanted").await;
        rt.insert(ObservedContainer {
            id: "foreign".into(),
            name: "someone-else".into(),
            image: "img:foreign".into(),
            labels: BTreeMap::new(),
            state: ContainerState::Exited,
            health: Health::None,
            exit_code: Some(0),
            started_at: None,
            finished_at: None,
        });
        let mut desired = DesiredState::default();
        desired.insert(DesiredInstance::new(
            InstanceKey::new("new", 0),
            spec("img:wanted"),
            "new.yaml",
        ));
        let observed = rt.list("ns").await.unwrap();
        let actions: Vec<Action> = [
            ("gone", &gone),
            ("old", &shared_old),
            ("f", &foreign_user),
            ("w", &wanted_old),
        ]
        .iter()
        .map(|(t, id)| remove_action(t, id))
        .collect();
        let outcomes = apply(
            &rt,
            actions.clone(),
            &ApplyOptions {
                namespace: "ns".into(),
                parallelism: 2,
            },
            &ImageLocks::default(),
        )
        .await;

        let removed = remove_unused_images(&rt, &actions, &outcomes, &observed, &desired).await;

        assert_eq!(removed, vec!["img:gone".to_string()]);
        assert!(!rt.image_present("img:gone").await.unwrap());
        for kept in ["img:shared", "img:foreign", "img:wanted"] {
            assert!(rt.image_present(kept).await.unwrap(), "{kept}");
        }
    }

    #[tokio::test]
    async fn a_failed_removal_keeps_its_image_and_a_quiet_pass_removes_nothing() {
        let rt = FakeRuntime::new();
        let id = run_ours(&rt, "gone", "img:gone").await;
        let observed = rt.list("ns").await.unwrap();
        let actions = vec![remove_action("gone", &id)];
        let failed = vec![Outcome {
            key: InstanceKey::new("gone", 0),
            verb: "remove",
            counts_as_attempt: false,
            result: Err(RuntimeError::Other("boom".into()).into()),
        }];
        let desired = DesiredState::default();
        assert!(
            remove_unused_images(&rt, &actions, &failed, &observed, &desired)
                .await
                .is_empty()
        );
        assert!(remove_unused_images(&rt, &[], &[], &observed, &desired)
            .await
            .is_empty());
        assert_eq!(rt.calls("remove_image"), 0);
        assert!(rt.image_present("img:gone").await.unwrap());
    }

    #[test]
    fn the_old_image_of_a_replacement_is_a_candidate_unless_still_desired() {
        let old = ObservedContainer {
            id: "old".into(),
            name: "ns-web-0".into(),
            image: "img:1".into(),
            labels: BTreeMap::from([(labels::NAMESPACE.to_string(), "ns".to_string())]),
            state: ContainerState::Running,
            health: Health::None,
            exit_code: None,
            started_at: None,
            finished_at: None,
        };
        let new = Arc::new(DesiredInstance::new(
            InstanceKey::new("web", 0),
            spec("img:2"),
            "web.yaml",
        ));
        let actions = vec![Action::Replace {
            old_id: "old".into(),
            old_hash: None,
            old_running: true,
            desired: new.clone(),
        }];
        let outcomes = vec![Outcome {
            key: new.key.clone(),
            verb: "replace",
            counts_as_attempt: true,
            result: Ok(()),
        }];
        let ids = removed_container_ids(&actions, &outcomes);
        let mut desired = DesiredState::default();
        desired.insert((*new).clone());
        assert_eq!(
            unused_images(&ids, std::slice::from_ref(&old), &desired),
            BTreeSet::from(["img:1".to_string()])
        );
        desired.insert(DesiredInstance::new(
            InstanceKey::new("other", 0),
            spec("img:1"),
            "other.yaml",
        ));
        assert!(unused_images(&ids, &[old], &desired).is_empty());
    }
}

#[cfg(test)]
mod held_task_tests {
    use super::*;

    #[test]
    fn the_image_of_a_task_on_hold_is_never_a_candidate() {
        let gone = ObservedContainer {
            id: "old".into(),
            name: "ns-web-0".into(),
            image: "img:held".into(),
            labels: BTreeMap::new(),
            state: crate::runtime::ContainerState::Exited,
            health: crate::runtime::Health::None,
            exit_code: Some(0),
            started_at: None,
            finished_at: None,
        };
        let removed = BTreeSet::from(["old".to_string()]);
        // The task is in the folder but held this pass (no instance resolved).
        let mut desired = DesiredState::default();
        desired.held_tasks.insert("web".into());
        desired.images.insert("img:held".into());
        assert!(unused_images(&removed, std::slice::from_ref(&gone), &desired).is_empty());
        assert_eq!(
            unused_images(&removed, &[gone], &DesiredState::default()),
            BTreeSet::from(["img:held".to_string()])
        );
    }
}
