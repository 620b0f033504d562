//! Image cleanup (`docker.cleanup.image`): the images of containers berth
//! removed (or replaced), once no berth task uses them any more.
//!
//! A removal's image becomes a candidate when its chain ends; the next pass,
//! which has a fresh list and desired set, keeps the candidates that no task
//! of the folder names (held tasks included) and no container of ours still
//! runs. Removal is never forced, so Docker itself keeps an image any other
//! container (ours or foreign, running or not) uses: that `Conflict` is
//! expected and kept quiet.

use std::collections::BTreeSet;

use tracing::{debug, info, warn};

use crate::desired::state::DesiredState;
use crate::runtime::{ContainerRuntime, ObservedContainer, RuntimeError};

/// The candidates that no desired instance and no container of ours uses.
pub fn unused_images(
    candidates: &BTreeSet<String>,
    observed: &[ObservedContainer],
    desired: &DesiredState,
) -> BTreeSet<String> {
    let in_use: BTreeSet<&str> = desired
        .images
        .iter()
        .map(String::as_str)
        .chain(observed.iter().map(|c| c.image.as_str()))
        .collect();
    candidates
        .iter()
        .filter(|i| !i.is_empty() && !in_use.contains(i.as_str()))
        .cloned()
        .collect()
}

/// Remove `images`; returns the ones removed. Never fails: an image still
/// in use (`Conflict`) or already gone is fine, anything else is logged.
pub async fn remove_images<R: ContainerRuntime>(
    runtime: &R,
    images: &BTreeSet<String>,
) -> Vec<String> {
    let mut removed = Vec::new();
    for image in images {
        match runtime.remove_image(image).await {
            Ok(()) => {
                info!(image = %image, action = "remove-image", "removed an image no task uses any more");
                removed.push(image.clone());
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
    use crate::desired::spec::ContainerSpec;
    use crate::desired::state::DesiredInstance;
    use crate::names::InstanceKey;
    use crate::runtime::fake::FakeRuntime;
    use crate::runtime::{ContainerState, CreateRequest, Health};
    use std::collections::BTreeMap;

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

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[tokio::test]
    async fn the_image_of_a_deleted_task_goes_but_images_still_used_stay() {
        let rt = FakeRuntime::new();
        // gone: its only user was removed. shared: also run by `keep`.
        // foreign: also used by a container berth does not own.
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
            host: Default::default(),
        });
        for id in [&gone, &shared_old, &foreign_user, &wanted_old] {
            rt.remove(id).await.unwrap();
        }
        let mut desired = DesiredState::default();
        desired.insert(DesiredInstance::new(
            InstanceKey::new("new", 0),
            spec("img:wanted"),
            "new.yaml",
        ));
        let observed = rt.list("ns").await.unwrap();
        let candidates = set(&["img:gone", "img:shared", "img:foreign", "img:wanted"]);
        let unused = unused_images(&candidates, &observed, &desired);
        assert_eq!(unused, set(&["img:gone", "img:foreign"]));

        let removed = remove_images(&rt, &unused).await;

        assert_eq!(
            removed,
            vec!["img:gone".to_string()],
            "Docker keeps img:foreign: in use"
        );
        assert!(!rt.image_present("img:gone").await.unwrap());
        for kept in ["img:shared", "img:foreign", "img:wanted"] {
            assert!(rt.image_present(kept).await.unwrap(), "{kept}");
        }
    }

    #[test]
    fn the_image_of_a_task_on_hold_is_never_removed() {
        // The task is in the folder but held this pass (no instance resolved).
        let mut desired = DesiredState::default();
        desired.held_tasks.insert("web".into());
        desired.images.insert("img:held".into());
        assert!(unused_images(&set(&["img:held"]), &[], &desired).is_empty());
        assert_eq!(
            unused_images(&set(&["img:held"]), &[], &DesiredState::default()),
            set(&["img:held"])
        );
    }
}
