//! Pull policies and pull failures, over the in-memory runtime: what apply
//! pulls for `missing`, `always` and `never`, one pull per image however many
//! tasks need it, and that a failed pull never costs the running old version.

use std::sync::Arc;
use std::time::Duration;

use berth::clock::Clock;
use berth::desired::registry::RegistryCredentials;
use berth::desired::spec::ContainerSpec;
use berth::desired::state::DesiredInstance;
use berth::engine::apply::{Executor, Outcome};
use berth::engine::error::ApplyError;
use berth::engine::plan::Action;
use berth::engine::pulls::{LogPulls, Pulls};
use berth::manifest::PullPolicy;
use berth::names::InstanceKey;
use berth::runtime::fake::FakeRuntime;
use berth::runtime::{ContainerRuntime, CreateRequest};

fn instance(task: &str, image: &str, pull: PullPolicy) -> Arc<DesiredInstance> {
    let mut d = DesiredInstance::new(
        InstanceKey::new(task, 0),
        ContainerSpec::for_image(image),
        format!("{task}.yaml"),
    );
    d.pull = pull;
    d.credentials = Some(RegistryCredentials {
        username: Some("deploy".into()),
        password: Some("hunter2".into()),
        ..Default::default()
    });
    d.stop_grace = Duration::from_secs(1);
    Arc::new(d)
}

async fn run(rt: &Arc<FakeRuntime>, actions: Vec<Action>) -> Vec<Outcome> {
    let pulls = Pulls::new(4, Arc::new(LogPulls));
    Executor::new(rt.clone(), "ns", 4, pulls, Clock::System)
        .apply(actions)
        .await
}

#[tokio::test]
async fn missing_pulls_only_an_absent_image() {
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image("present:1");
    let out = run(
        &rt,
        vec![
            Action::Create {
                desired: instance("a", "present:1", PullPolicy::Missing),
            },
            Action::Create {
                desired: instance("b", "absent:1", PullPolicy::Missing),
            },
        ],
    )
    .await;
    assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
    assert_eq!(rt.calls("pull"), 1);
}

#[tokio::test]
async fn always_pulls_at_each_create_even_when_the_image_is_present() {
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image("app:1");
    let out = run(
        &rt,
        vec![Action::Create {
            desired: instance("a", "app:1", PullPolicy::Always),
        }],
    )
    .await;
    assert!(out[0].result.is_ok());
    assert_eq!(rt.calls("pull"), 1);
}

#[tokio::test]
async fn never_never_pulls_and_says_why_when_the_image_is_missing() {
    let rt = Arc::new(FakeRuntime::new());
    let out = run(
        &rt,
        vec![Action::Create {
            desired: instance("a", "absent:1", PullPolicy::Never),
        }],
    )
    .await;
    let err = out[0].result.clone().unwrap_err();
    assert!(err.to_string().contains("pull: never"), "{err}");
    assert!(
        out[0].counts_as_attempt,
        "a pull failure must back off like a failed start"
    );
    assert_eq!(rt.calls("pull"), 0);
}

#[tokio::test]
async fn one_pull_per_image_however_many_tasks_need_it() {
    let rt = Arc::new(FakeRuntime::new());
    let actions = (0..4)
        .map(|i| Action::Create {
            desired: instance(&format!("t{i}"), "shared:1", PullPolicy::Missing),
        })
        .collect();
    let out = run(&rt, actions).await;
    assert!(out.iter().all(|o| o.result.is_ok()), "{out:?}");
    assert_eq!(rt.calls("pull"), 1);
}

#[tokio::test]
async fn a_failed_pull_during_a_replacement_leaves_the_old_container_running() {
    let rt = Arc::new(FakeRuntime::new());
    rt.add_image("app:1");
    let old = instance("web", "app:1", PullPolicy::Missing);
    let labels = old.spec.container_labels("ns", &old.key, "web.yaml");
    let id = rt
        .create(CreateRequest {
            name: "ns-web-0",
            spec: &old.spec,
            labels: &labels,
        })
        .await
        .unwrap();
    rt.start(&id).await.unwrap();
    rt.make_unpullable("app:2");
    let before = rt.mutations();

    let out = run(
        &rt,
        vec![Action::Replace {
            old_id: id.clone(),
            old_hash: Some(old.hash.clone()),
            old_running: true,
            desired: instance("web", "app:2", PullPolicy::Missing),
        }],
    )
    .await;

    let err = out[0].result.clone().unwrap_err();
    assert!(matches!(err, ApplyError::Pull { .. }), "{err:?}");
    assert!(!err.to_string().contains("hunter2"), "{err}");
    assert!(out[0].counts_as_attempt);
    // Only the pull was attempted: no stop, rename or create.
    assert_eq!(rt.mutations() - before, 1);
    let c = rt.inspect("ns-web-0").await.unwrap();
    assert_eq!(c.id, id);
    assert!(c.is_running());
}
