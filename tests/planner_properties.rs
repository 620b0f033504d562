//! Properties of plan + apply over the in-memory runtime (no Docker here):
//! for any desired set and any starting world, applying the plan and planning
//! again yields nothing to do, and containers berth does not own are never
//! touched.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use berth::clock::Clock;
use berth::desired::spec::ContainerSpec;
use berth::desired::state::{DesiredInstance, DesiredState};
use berth::engine::apply::{Executor, Outcome};
use berth::engine::backoff::BackoffTable;
use berth::engine::error::ApplyError;
use berth::engine::plan::{plan, Action, Memory, PlanOptions};
use berth::engine::pulls::{LogPulls, Pulls};
use berth::names::aside_name;
use berth::names::{labels, InstanceKey};
use berth::runtime::fake::FakeRuntime;
use berth::runtime::{ContainerState, Health, ObservedContainer};
use proptest::prelude::*;

const NS: &str = "berth";

#[derive(Debug, Clone)]
struct World {
    /// task → (count, image variant)
    desired: BTreeMap<String, (u32, u8)>,
    /// Existing containers: (task, index, image variant, state, aside?, other namespace?, unlabelled?)
    existing: Vec<(String, u32, u8, u8, bool, bool, bool)>,
}

fn world() -> impl Strategy<Value = World> {
    let task = prop::sample::select(vec!["web", "api", "db", "cache"]).prop_map(String::from);
    (
        prop::collection::btree_map(task.clone(), (0u32..4, 0u8..2), 0..4),
        prop::collection::vec(
            (
                task,
                0u32..5,
                0u8..2,
                0u8..4,
                any::<bool>(),
                prop::bool::weighted(0.2),
                prop::bool::weighted(0.1),
            ),
            0..10,
        ),
    )
        .prop_map(|(desired, existing)| World { desired, existing })
}

fn spec(task: &str, variant: u8) -> ContainerSpec {
    let mut s = ContainerSpec::for_image(format!("img-{variant}"));
    s.labels.insert("task".into(), task.into());
    s
}

fn build(world: &World) -> (FakeRuntime, DesiredState, Vec<ObservedContainer>) {
    let rt = FakeRuntime::new();
    rt.add_image("img-0");
    rt.add_image("img-1");
    let mut desired = DesiredState::default();
    for (task, (count, variant)) in &world.desired {
        desired.tasks.insert(task.clone());
        for index in 0..*count {
            desired.insert(DesiredInstance::new(
                InstanceKey::new(task.clone(), index),
                spec(task, *variant),
                format!("{task}.yaml"),
            ));
        }
    }
    let mut foreign = Vec::new();
    for (n, (task, index, variant, state, aside, other_ns, unlabelled)) in
        world.existing.iter().enumerate()
    {
        let key = InstanceKey::new(task.clone(), *index);
        let s = spec(task, *variant);
        let ns = if *other_ns { "other" } else { NS };
        let mut labels = s.container_labels(ns, &key, &format!("{task}.yaml"));
        if *unlabelled {
            labels.clear();
        }
        let id = berth::runtime::fake::fake_id(1_000_000 + n as u64);
        let canonical = key.container_name(NS);
        let name = if *aside {
            aside_name(&canonical, &id, true)
        } else {
            canonical
        };
        // Names are unique in Docker: skip a duplicate canonical name.
        if rt.all().iter().any(|c| c.name == name) {
            continue;
        }
        let c = ObservedContainer {
            id,
            name,
            image: s.image.clone(),
            labels,
            state: match state {
                0 => ContainerState::Running,
                1 => ContainerState::Exited,
                2 => ContainerState::Created,
                _ => ContainerState::Dead,
            },
            health: Health::None,
            exit_code: (*state == 1).then_some(1),
            started_at: None,
            finished_at: None,
            host: Default::default(),
        };
        if *other_ns || *unlabelled {
            foreign.push(c.clone());
        }
        rt.insert(c);
    }
    (rt, desired, foreign)
}

fn options() -> PlanOptions {
    PlanOptions::new(NS)
}

async fn apply(rt: &Arc<FakeRuntime>, actions: Vec<Action>) -> Vec<Outcome> {
    let pulls = Pulls::new(3, Arc::new(LogPulls));
    Executor::new(rt.clone(), NS, 3, pulls, Clock::System)
        .apply(actions)
        .await
}

async fn converge(rt: &Arc<FakeRuntime>, desired: &DesiredState) -> usize {
    let plan_opts = options();
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    // A restore takes one pass, the replacement it enables another; a
    // rollback of a crashed new container one more.
    for pass in 0..6 {
        let observed = rt.list(NS).await.expect("fake list");
        let p = plan(
            desired,
            &observed,
            Memory::of(&BackoffTable::new()),
            now,
            &plan_opts,
        );
        if p.is_empty() {
            return pass;
        }
        let outcomes = apply(rt, p.actions).await;
        for o in &outcomes {
            // A foreign container holding the name is a legitimate failure:
            // berth reports it and waits, touching nothing. So is a
            // rollback: a world whose new container had already crashed
            // mid-update goes back to the old one (and updates again).
            let conflict = matches!(o.result, Err(ApplyError::NameConflict { .. }));
            let rolled_back = matches!(o.result, Err(ApplyError::RolledBack { .. }));
            assert!(
                o.result.is_ok() || conflict || rolled_back,
                "{} {}: {:?}",
                o.verb,
                o.key,
                o.result
            );
        }
        if outcomes.iter().all(|o| o.result.is_err()) {
            return pass;
        }
    }
    usize::MAX
}

use berth::runtime::ContainerRuntime;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn plan_apply_plan_converges_and_never_touches_foreign_containers(w in world()) {
        let rt_runtime = tokio::runtime::Builder::new_current_thread().build().expect("tokio");
        rt_runtime.block_on(async {
            let (rt, desired, foreign) = build(&w);
            let rt = Arc::new(rt);
            let passes = converge(&rt, &desired).await;
            prop_assert!(passes <= 6, "did not converge within 6 passes: {w:?}");

            // Exactly one running container per desired instance, with its spec,
            // except where a foreign container holds the name.
            let blocked: Vec<String> = foreign.iter().map(|f| f.name.clone()).collect();
            let expected = desired.instances.keys()
                .filter(|k| !blocked.contains(&k.container_name(NS))).count();
            // Where a foreign container holds the name, berth reports the
            // conflict and waits: its own containers for that instance (say,
            // one renamed aside by an interrupted replacement) are left as
            // they are.
            let ours: Vec<_> = rt.list(NS).await.expect("list").into_iter()
                .filter(|c| c.namespace() == Some(NS))
                .filter(|c| !c.key().is_some_and(|k| blocked.contains(&k.container_name(NS))))
                .collect();
            prop_assert_eq!(ours.len(), expected, "{:?}", ours);
            for c in &ours {
                let key = c.key().expect("key");
                let want = &desired.instances[&key];
                prop_assert_eq!(c.name.clone(), key.container_name(NS));
                prop_assert_eq!(c.spec_hash(), Some(want.hash.as_str()));
                prop_assert_eq!(c.state, ContainerState::Running);
            }
            // Foreign containers are exactly as they were.
            let all = rt.all();
            for f in &foreign {
                let now = all.iter().find(|c| c.id == f.id);
                prop_assert_eq!(now, Some(f), "foreign container changed");
            }
            // And a further pass makes no mutating call.
            let before = rt.mutations();
            let observed = rt.list(NS).await.expect("list");
            let p = plan(&desired, &observed, Memory::of(&BackoffTable::new()), SystemTime::now(), &options());
            let outcomes = apply(&rt, p.actions).await;
            prop_assert!(outcomes.iter().all(|o| o.result.is_err()), "only blocked creates remain");
            prop_assert_eq!(rt.mutations(), before);
            prop_assert!(ours.iter().all(|c| c.labels.get(labels::NAMESPACE).map(String::as_str) == Some(NS)));
            Ok(())
        })?;
    }
}
