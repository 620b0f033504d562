//! `DockerRuntime` against the real Docker daemon. Each test owns a fresh
//! namespace whose guard removes what it made, and proves one behaviour the
//! controller relies on (error kinds, exit details, resource mapping,
//! ownership filtering).

mod common;

use std::time::{Duration, Instant};

use berth::config::DockerConfig;
use berth::desired::spec::{ContainerSpec, PortBinding};
use berth::names::InstanceKey;
use berth::runtime::docker::{ContainerEvent, DockerRuntime};
use berth::runtime::{ContainerRuntime, ContainerState, CreateRequest, RuntimeError};
use common::{docker, fixture_image, wait_for, TestNamespace};
use futures_util::StreamExt;

const DEADLINE: Duration = Duration::from_secs(30);

async fn runtime() -> DockerRuntime {
    DockerRuntime::connect(&DockerConfig::default())
        .await
        .unwrap()
}

fn fixture_spec(args: &[&str]) -> ContainerSpec {
    let mut spec = ContainerSpec::for_image(fixture_image());
    spec.cmd = Some(args.iter().map(|a| a.to_string()).collect());
    spec
}

/// Create (not start) instance `index` of `task` in the guard's namespace.
async fn create(
    rt: &DockerRuntime,
    guard: &TestNamespace,
    task: &str,
    index: u32,
    spec: &ContainerSpec,
) -> (String, String) {
    let key = InstanceKey::new(task, index);
    let labels = spec.container_labels(&guard.ns, &key, "test.yaml");
    let name = key.container_name(&guard.ns);
    let id = rt
        .create(CreateRequest {
            name: &name,
            spec,
            labels: &labels,
        })
        .await
        .unwrap();
    (name, id)
}

#[tokio::test]
async fn a_started_container_is_listed_running_with_berths_labels() {
    let guard = TestNamespace::new("listrun");
    let rt = runtime().await;
    let spec = fixture_spec(&["sleep", "forever"]);
    let (name, id) = create(&rt, &guard, "web", 0, &spec).await;
    rt.start(&id).await.unwrap();

    let listed = rt.list(&guard.ns).await.unwrap();

    assert_eq!(listed.len(), 1, "{listed:?}");
    let c = &listed[0];
    assert_eq!(c.id, id);
    assert_eq!(c.name, name);
    assert_eq!(c.state, ContainerState::Running);
    assert_eq!(c.image, spec.image);
    assert_eq!(c.namespace(), Some(guard.ns.as_str()));
    assert_eq!(c.key(), Some(InstanceKey::new("web", 0)));
    assert_eq!(c.spec_hash(), Some(spec.hash().as_str()));
    assert_eq!(c.manifest(), Some("test.yaml"));
    // Running containers carry no exit details: list makes no inspect for
    // them. Their start time is read from Docker's "Up ..." status text, so
    // it is only as precise as `docker ps` (a minute, for an old container).
    assert_eq!(c.exit_code, None);
    let started = c.started_at.expect("a running container has a start time");
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(60), "started {age:?} ago");
    // inspect of the same container does give the start time.
    let inspected = rt.inspect(&name).await.unwrap();
    assert_eq!(inspected.id, id);
    assert_eq!(inspected.labels, c.labels);
    assert!(inspected.started_at.is_some());
}

#[tokio::test]
async fn creating_a_taken_name_is_a_conflict_naming_the_holder() {
    let guard = TestNamespace::new("conflict");
    let rt = runtime().await;
    let spec = fixture_spec(&["sleep", "forever"]);
    let (_, id) = create(&rt, &guard, "web", 0, &spec).await;

    let key = InstanceKey::new("web", 0);
    let labels = spec.container_labels(&guard.ns, &key, "test.yaml");
    let err = rt
        .create(CreateRequest {
            name: &key.container_name(&guard.ns),
            spec: &spec,
            labels: &labels,
        })
        .await
        .unwrap_err();

    match err {
        RuntimeError::Conflict(message) => assert!(message.contains(&id), "{message}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
}

#[tokio::test]
async fn inspecting_a_missing_container_is_not_found() {
    let guard = TestNamespace::new("missing");
    let rt = runtime().await;
    let err = rt
        .inspect(&guard.container_name("nothing", 0))
        .await
        .unwrap_err();
    assert!(matches!(err, RuntimeError::NotFound(_)), "{err:?}");
}

/// Docker 20.10 answers 304 to starting a running (or stopping a stopped)
/// container; bollard treats 304 as success, so the runtime returns Ok.
#[tokio::test]
async fn starting_a_running_or_stopping_a_stopped_container_is_ok() {
    let guard = TestNamespace::new("idem");
    let rt = runtime().await;
    let (_, id) = create(&rt, &guard, "web", 0, &fixture_spec(&["sleep", "forever"])).await;
    rt.start(&id).await.unwrap();

    assert_eq!(rt.start(&id).await, Ok(()));
    rt.stop(&id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(rt.stop(&id, Duration::from_secs(10)).await, Ok(()));
}

#[tokio::test]
async fn a_stopped_container_is_listed_exited_with_exit_code_and_times() {
    let guard = TestNamespace::new("stopped");
    let rt = runtime().await;
    let (_, id) = create(&rt, &guard, "web", 0, &fixture_spec(&["sleep", "forever"])).await;
    rt.start(&id).await.unwrap();

    // The fixture exits on SIGTERM, so a long grace must not be waited out.
    let began = Instant::now();
    rt.stop(&id, Duration::from_secs(30)).await.unwrap();
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "{:?}",
        began.elapsed()
    );

    let listed = rt.list(&guard.ns).await.unwrap();
    let c = &listed[0];
    assert_eq!(c.state, ContainerState::Exited);
    assert_eq!(c.exit_code, Some(0));
    let (started, finished) = (c.started_at.unwrap(), c.finished_at.unwrap());
    assert!(finished >= started, "{started:?} {finished:?}");
}

#[tokio::test]
async fn a_container_that_exits_by_itself_reports_its_exit_code() {
    let guard = TestNamespace::new("exit3");
    let rt = runtime().await;
    let (_, id) = create(&rt, &guard, "job", 0, &fixture_spec(&["exit", "3"])).await;
    rt.start(&id).await.unwrap();

    let exited = wait_for(DEADLINE, "the container to exit", || async {
        let listed = rt.list(&guard.ns).await.unwrap();
        listed
            .into_iter()
            .find(|c| c.state == ContainerState::Exited)
    })
    .await;

    assert_eq!(exited.exit_code, Some(3));
    assert!(exited.finished_at.is_some());
}

#[tokio::test]
async fn a_created_but_never_started_container_has_no_times() {
    let guard = TestNamespace::new("created");
    let rt = runtime().await;
    create(&rt, &guard, "web", 0, &fixture_spec(&["sleep", "forever"])).await;

    let listed = rt.list(&guard.ns).await.unwrap();

    assert_eq!(listed[0].state, ContainerState::Created);
    assert_eq!(listed[0].started_at, None);
    assert_eq!(listed[0].finished_at, None);
    // Never ran, so no exit code: the list does not inspect a created
    // container (its start may be in flight, and the inspect would wait).
    assert_eq!(listed[0].exit_code, None);
}

#[tokio::test]
async fn rename_changes_the_name_of_a_running_container() {
    let guard = TestNamespace::new("rename");
    let rt = runtime().await;
    let (_, id) = create(&rt, &guard, "web", 0, &fixture_spec(&["sleep", "forever"])).await;
    rt.start(&id).await.unwrap();
    let new_name = format!("{}-old", guard.container_name("web", 0));

    rt.rename(&id, &new_name).await.unwrap();

    assert_eq!(rt.inspect(&id).await.unwrap().name, new_name);
    assert_eq!(docker::ps(&guard.ns)[0].name, new_name);
}

#[tokio::test]
async fn removing_twice_is_not_found_the_second_time() {
    let guard = TestNamespace::new("remove");
    let rt = runtime().await;
    let (_, id) = create(&rt, &guard, "web", 0, &fixture_spec(&["sleep", "forever"])).await;
    rt.start(&id).await.unwrap();

    rt.remove(&id).await.unwrap();
    let again = rt.remove(&id).await.unwrap_err();

    assert!(matches!(again, RuntimeError::NotFound(_)), "{again:?}");
    assert!(docker::ps(&guard.ns).is_empty());
    assert!(rt.list(&guard.ns).await.unwrap().is_empty());
}

#[tokio::test]
async fn memory_and_cpu_limits_reach_docker_with_no_swap() {
    let guard = TestNamespace::new("limits");
    let rt = runtime().await;
    let mut spec = fixture_spec(&["sleep", "forever"]);
    spec.memory_bytes = Some(64 * 1024 * 1024);
    spec.cpu_shares = Some(250);
    spec.stop_timeout_secs = Some(7);
    let (name, _) = create(&rt, &guard, "web", 0, &spec).await;

    let c = docker::inspect(&name).unwrap();

    assert_eq!(c["HostConfig"]["Memory"], 67_108_864);
    assert_eq!(c["HostConfig"]["MemorySwap"], 67_108_864);
    assert_eq!(c["HostConfig"]["CpuShares"], 250);
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "no");
    assert_eq!(c["Config"]["StopTimeout"], 7);
}

fn free_port() -> u16 {
    // Bound and released at once: Docker binds it a moment later. A clash
    // with another process in between is possible but rare.
    let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    tcp.local_addr().unwrap().port()
}

#[tokio::test]
async fn ports_are_published_on_tcp_and_udp_and_reach_the_container() {
    let guard = TestNamespace::new("ports");
    let rt = runtime().await;
    let host_port = free_port();
    let mut spec = fixture_spec(&["serve-http", "8080"]);
    spec.ports.push(PortBinding {
        label: "http".into(),
        host_port,
        container_port: 8080,
    });
    let (name, id) = create(&rt, &guard, "web", 0, &spec).await;
    rt.start(&id).await.unwrap();

    let c = docker::inspect(&name).unwrap();
    for proto in ["tcp", "udp"] {
        assert_eq!(
            c["HostConfig"]["PortBindings"][format!("8080/{proto}")][0]["HostPort"],
            host_port.to_string(),
            "{proto}"
        );
    }
    let body = wait_for(DEADLINE, "an HTTP answer on the published port", || async {
        http_get(host_port).ok()
    })
    .await;
    assert!(body.ends_with("\r\n\r\nok"), "{body}");
    let echo = wait_for(DEADLINE, "a UDP echo on the published port", || async {
        udp_echo(host_port, b"ping").ok()
    })
    .await;
    assert_eq!(echo, b"ping");
}

fn http_get(port: u16) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    if out.is_empty() {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    Ok(out)
}

fn udp_echo(port: u16, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    s.send_to(payload, ("127.0.0.1", port))?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf)?;
    Ok(buf[..n].to_vec())
}

#[tokio::test]
async fn list_never_returns_containers_of_another_namespace_or_unlabelled_ones() {
    let guard = TestNamespace::new("owner");
    let rt = runtime().await;
    let (_, id) = create(&rt, &guard, "web", 0, &fixture_spec(&["sleep", "forever"])).await;
    let other_ns = format!("{}-x", guard.ns);
    guard.foreign(
        &format!("{other_ns}-web-0"),
        &[
            ("io.berth.namespace", other_ns.as_str()),
            ("io.berth.task", "web"),
            ("io.berth.index", "0"),
        ],
    );
    guard.foreign(&format!("{}-plain", guard.ns), &[]);

    let listed = rt.list(&guard.ns).await.unwrap();

    let ids: Vec<&str> = listed.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, vec![id.as_str()]);
}

#[tokio::test]
async fn an_unreachable_endpoint_connects_and_then_reports_unavailable() {
    let cfg = DockerConfig {
        endpoint: Some("unix:///tmp/berth-nonexistent.sock".into()),
        ..Default::default()
    };
    let rt = DockerRuntime::connect(&cfg).await.unwrap();

    let err = rt.list("berth").await.unwrap_err();

    assert!(matches!(err, RuntimeError::Unavailable(_)), "{err:?}");
    let err = rt.version().await.unwrap_err();
    assert!(matches!(err, RuntimeError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn a_refused_tcp_endpoint_is_unavailable() {
    let port = free_port();
    let cfg = DockerConfig {
        endpoint: Some(format!("tcp://127.0.0.1:{port}")),
        ..Default::default()
    };
    let rt = DockerRuntime::connect(&cfg).await.unwrap();
    let err = rt.list("berth").await.unwrap_err();
    assert!(matches!(err, RuntimeError::Unavailable(_)), "{err:?}");
}

#[tokio::test]
async fn images_are_reported_present_or_absent_and_the_version_is_known() {
    let rt = runtime().await;
    assert!(rt.image_present(&fixture_image()).await.unwrap());
    assert!(!rt.image_present("berth-fixture:no-such-tag").await.unwrap());
    let version = rt.version().await.unwrap();
    assert!(
        version.chars().next().is_some_and(|c| c.is_ascii_digit()),
        "{version}"
    );
}

#[tokio::test]
async fn a_pull_from_an_unreachable_registry_fails_with_dockers_message() {
    let rt = runtime().await;
    let port = free_port();
    let err = rt
        .pull(&format!("127.0.0.1:{port}/nothing:1"), None, &|_| {})
        .await
        .unwrap_err();
    // The daemon answered; only the registry is missing.
    assert!(!matches!(err, RuntimeError::Unavailable(_)), "{err:?}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[tokio::test]
async fn removing_an_image_a_container_uses_is_a_conflict() {
    let guard = TestNamespace::new("rmi");
    let rt = runtime().await;
    let image = common::fixture_image_copy(&format!("berth-fixture-copy:{}", guard.ns));
    guard.track_image(&image);
    let mut spec = fixture_spec(&["sleep", "forever"]);
    spec.image = image.clone();
    let (_, id) = create(&rt, &guard, "web", 0, &spec).await;

    let err = rt.remove_image(&image).await.unwrap_err();
    assert!(matches!(err, RuntimeError::Conflict(_)), "{err:?}");

    rt.remove(&id).await.unwrap();
    rt.remove_image(&image).await.unwrap();
    assert!(!rt.image_present(&image).await.unwrap());
}

#[tokio::test]
async fn events_of_the_namespace_name_the_task_and_index() {
    let guard = TestNamespace::new("events");
    let rt = runtime().await;
    // Replay from before the create: the subscription itself is only made
    // on the first poll, after the container may already have died.
    let since = std::time::SystemTime::now() - Duration::from_secs(1);
    let mut events = Box::pin(rt.events_since(&guard.ns, Some(since)));
    let (_, id) = create(&rt, &guard, "web", 2, &fixture_spec(&["exit", "1"])).await;
    rt.start(&id).await.unwrap();

    let (die, seen) = first_event(&mut events, "die", |a| a == "die").await;

    assert_eq!(die.id, id);
    assert_eq!(die.task.as_deref(), Some("web"));
    assert_eq!(die.index, Some(2));
    // Only what may need attention is sent: not the create or the start
    // that came before the die.
    for action in ["create", "start"] {
        assert!(
            !seen.iter().any(|a| a == action),
            "{action} was sent: {seen:?}"
        );
    }
}

/// The first event whose action `wanted` accepts, within [`DEADLINE`], and
/// the actions of every event that came before it.
async fn first_event(
    events: &mut (impl futures_util::Stream<Item = Result<ContainerEvent, RuntimeError>> + Unpin),
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> (ContainerEvent, Vec<String>) {
    let mut seen = Vec::new();
    let found = tokio::time::timeout(DEADLINE, async {
        while let Some(event) = events.next().await {
            let event = event.unwrap();
            if wanted(&event.action) {
                return Some(event);
            }
            seen.push(event.action);
        }
        None
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} event within {DEADLINE:?}; saw {seen:?}"))
    .unwrap_or_else(|| panic!("event stream ended before a {what} event; saw {seen:?}"));
    (found, seen)
}

/// The stream asks Docker for `health_status` only as a prefix of the
/// action (`health_status: unhealthy`): the unhealthy verdict must still
/// arrive, since it is what makes berth look at the container at once.
#[tokio::test]
async fn the_filtered_event_stream_still_carries_an_unhealthy_verdict() {
    let guard = TestNamespace::new("evhealth");
    let rt = runtime().await;
    let since = std::time::SystemTime::now() - Duration::from_secs(1);
    let mut events = Box::pin(rt.events_since(&guard.ns, Some(since)));
    let mut bad = fixture_spec(&["serve-http", "8080"]);
    bad.healthcheck = Some(berth::desired::spec::HealthcheckSpec {
        test: vec!["CMD".into(), "/fixture".into(), "probe".into(), "9".into()],
        interval_ns: Some(300_000_000),
        timeout_ns: Some(1_000_000_000),
        retries: Some(1),
        start_period_ns: None,
    });
    let (_, id) = create(&rt, &guard, "sick", 0, &bad).await;
    rt.start(&id).await.unwrap();

    let (verdict, _) = first_event(&mut events, "unhealthy", |a| {
        a.starts_with("health_status") && a.contains("unhealthy")
    })
    .await;
    assert_eq!(verdict.id, id);
    assert_eq!(verdict.task.as_deref(), Some("sick"));
}

#[tokio::test]
async fn events_from_an_unreachable_endpoint_yield_one_unavailable_and_end() {
    let cfg = DockerConfig {
        endpoint: Some("unix:///tmp/berth-nonexistent.sock".into()),
        ..Default::default()
    };
    let rt = DockerRuntime::connect(&cfg).await.unwrap();

    let items: Vec<_> = rt.events("berth").collect().await;

    assert_eq!(items.len(), 1, "{items:?}");
    assert!(
        matches!(items[0], Err(RuntimeError::Unavailable(_))),
        "{items:?}"
    );
}

#[tokio::test]
async fn healthcheck_results_show_in_list_as_healthy_or_unhealthy() {
    let guard = TestNamespace::new("health");
    let rt = runtime().await;
    let check = |port: &str| berth::desired::spec::HealthcheckSpec {
        test: vec!["CMD".into(), "/fixture".into(), "probe".into(), port.into()],
        interval_ns: Some(300_000_000),
        timeout_ns: Some(1_000_000_000),
        retries: Some(1),
        start_period_ns: None,
    };
    let mut good = fixture_spec(&["serve-http", "8080"]);
    good.healthcheck = Some(check("8080"));
    let mut bad = fixture_spec(&["serve-http", "8080"]);
    bad.healthcheck = Some(check("9"));
    let (good_name, good_id) = create(&rt, &guard, "good", 0, &good).await;
    let (bad_name, bad_id) = create(&rt, &guard, "bad", 0, &bad).await;
    rt.start(&good_id).await.unwrap();
    rt.start(&bad_id).await.unwrap();

    wait_for(
        DEADLINE,
        "one healthy and one unhealthy container",
        || async {
            let listed = rt.list(&guard.ns).await.unwrap();
            let health = |name: &str| listed.iter().find(|c| c.name == name).map(|c| c.health);
            (health(&good_name) == Some(berth::runtime::Health::Healthy)
                && health(&bad_name) == Some(berth::runtime::Health::Unhealthy))
            .then_some(())
        },
    )
    .await;
    assert_eq!(
        rt.inspect(&bad_name).await.unwrap().health,
        berth::runtime::Health::Unhealthy
    );
}
