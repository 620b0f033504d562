//! berth's HTTP port facing strangers, with the real binary and the real
//! Docker daemon: a flood of idle connections takes neither `/healthz` nor
//! the restart of a killed container with it; a slow client is cut off;
//! when every slot is taken, `/healthz` still answers from the reserve;
//! with `http.token_file` the API wants the token and `/healthz` and
//! `/metrics` stay open.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{free_addr, http_get, http_request_with, Berth};
use common::{docker, fixture_task, run_berth, wait_for_sync, write, TestNamespace};

fn sleeper() -> String {
    format!(
        "name: app\n{}stop_timeout: 1s\n",
        fixture_task("sleep", &["forever"], "")
    )
}

/// (running, StartedAt) of a container.
fn state(name: &str) -> Option<(bool, String)> {
    let c = docker::inspect(name)?;
    Some((
        c["State"]["Running"].as_bool()?,
        c["State"]["StartedAt"].as_str()?.to_string(),
    ))
}

/// How long until the server closes `s` (reads EOF or an error).
fn time_to_close(mut s: TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Some(start.elapsed()),
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(_) => return Some(start.elapsed()),
        }
    }
}

/// The soft limit on open files of process `pid`, from /proc.
fn open_files_limit(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .to_string();
    let mut f = line.split_whitespace().skip(3);
    (f.next().unwrap().to_string(), f.next().unwrap().to_string())
}

/// Start berth with a soft limit of 1,024 open files, as a service gets by
/// default: it must raise it itself. This process keeps the hard limit.
fn start_with_1024_files(ns: &TestNamespace, dir: &Path, extra: &[&str]) -> Berth {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let ours = getrlimit(Resource::Nofile);
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(1024),
            maximum: ours.maximum,
        },
    )
    .unwrap();
    let berth = Berth::start(ns, dir, extra);
    // This test process holds the 1,100 connections: it needs the room.
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: ours.maximum.or(Some(65536)),
            maximum: ours.maximum,
        },
    )
    .unwrap();
    berth
}

#[test]
fn a_flood_of_idle_connections_leaves_healthz_and_restarts_working() {
    let ns = TestNamespace::new("flood");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "app.yaml", &sleeper());
    let berth = start_with_1024_files(&ns, dir.path(), &[]);
    berth.wait_running(Duration::from_secs(60), &[("app", 0)]);
    let (soft, hard) = open_files_limit(berth.pid());
    assert_eq!(soft, hard, "the soft limit is raised to the hard one");

    // 1,100 connections that never send a byte.
    let idle: Vec<TcpStream> = (0..1100)
        .filter_map(|_| TcpStream::connect_timeout(&berth.addr, Duration::from_secs(2)).ok())
        .collect();
    assert!(idle.len() >= 1000, "opened {} connections", idle.len());

    let asked = Instant::now();
    let healthz = http_get(berth.addr, "/healthz");
    let took = asked.elapsed();
    assert_eq!(healthz.map(|(c, _)| c), Some(200));
    println!("/healthz under 1,100 idle connections: {took:?}");
    assert!(took < Duration::from_secs(1), "/healthz took {took:?}");
    let status = berth.status().expect("/v1/status answers too");
    assert_eq!(status["namespace"], ns.ns.as_str());

    // A killed container runs again within 2 s: Docker calls still get
    // file descriptors.
    let name = ns.container_name("app", 0);
    let (_, started) = state(&name).unwrap();
    let killed = Instant::now();
    docker::cli(&["kill", &name]);
    wait_for_sync(
        Duration::from_secs(20),
        "the killed container to run again",
        || state(&name).filter(|(running, s)| *running && *s != started),
    );
    let restart = killed.elapsed();
    println!("restart under 1,100 idle connections: {restart:?}");
    assert!(restart < Duration::from_secs(2), "restart took {restart:?}");
    assert!(
        !berth.log().contains("Too many open files"),
        "{}",
        berth.log()
    );

    // Idle connections are closed after the header timeout (5 s).
    let first = idle.into_iter().next().unwrap();
    let closed = time_to_close(first, Duration::from_secs(15));
    assert!(
        closed.is_some_and(|d| d < Duration::from_secs(8)),
        "an idle connection was kept {closed:?}"
    );
}

#[test]
fn slow_clients_are_cut_off_and_the_reserve_answers_healthz_when_every_slot_is_taken() {
    let ns = TestNamespace::new("slots");
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "app.yaml", &sleeper());
    let berth = Berth::start(&ns, dir.path(), &["--http-max-connections", "4"]);
    berth.wait_running(Duration::from_secs(60), &[("app", 0)]);

    // Four clients that start a request and never finish its headers.
    let slow: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut s = TcpStream::connect(berth.addr).unwrap();
            s.write_all(b"GET /v1/status HTTP/1.1\r\nHost: x\r\n")
                .unwrap();
            s
        })
        .collect();
    // Let the server take them into its slots.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        http_get(berth.addr, "/healthz").map(|(c, _)| c),
        Some(200),
        "/healthz from the reserve"
    );
    assert_eq!(
        http_get(berth.addr, "/metrics").map(|(c, _)| c),
        Some(200),
        "/metrics from the reserve"
    );
    assert_eq!(
        http_get(berth.addr, "/v1/status").map(|(c, _)| c),
        Some(503),
        "the API waits for a slot"
    );
    // The header timeout cuts them off, and the API answers again.
    for s in slow {
        let closed = time_to_close(s, Duration::from_secs(15));
        assert!(
            closed.is_some_and(|d| d < Duration::from_secs(8)),
            "a slow client was kept {closed:?}"
        );
    }
    assert!(berth.status().is_some());

    // A keep-alive connection is closed once it has idled for the header
    // timeout after its last answer.
    let mut kept = TcpStream::connect(berth.addr).unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut answer = [0u8; 17];
    kept.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"HTTP/1.1 200 OK\r\n");
    let closed = time_to_close(kept, Duration::from_secs(15));
    assert!(
        closed.is_some_and(|d| d > Duration::from_secs(3) && d < Duration::from_secs(8)),
        "an idle keep-alive connection was kept {closed:?}"
    );
}

#[test]
fn with_a_token_file_the_api_wants_the_token_and_the_probes_stay_open() {
    let ns = TestNamespace::new("token");
    let dir = tempfile::tempdir().unwrap();
    let manifests = dir.path().join("m");
    std::fs::create_dir(&manifests).unwrap();
    write(&manifests, "app.yaml", &sleeper());
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, "tok-3f9a1c\n").unwrap();
    let token_arg = token_file.to_str().unwrap();
    let berth = Berth::start(&ns, &manifests, &["--http-token-file", token_arg]);
    berth.wait_for_log(Duration::from_secs(60), "serving /healthz");
    let addr = berth.addr;

    let code = |method: &str, path: &str, headers: &str| {
        http_request_with(addr, method, path, headers).map(|(c, _)| c)
    };
    let good = "Authorization: Bearer tok-3f9a1c\r\n";
    let bad = "Authorization: Bearer tok-3f9a1d\r\n";
    wait_for_sync(Duration::from_secs(60), "/healthz 200", || {
        (code("GET", "/healthz", "") == Some(200)).then_some(())
    });
    assert_eq!(code("GET", "/metrics", ""), Some(200));
    assert_eq!(code("GET", "/v1/status", ""), Some(401));
    assert_eq!(code("GET", "/v1/status", bad), Some(401));
    assert_eq!(code("GET", "/v1/status", good), Some(200));
    assert_eq!(code("POST", "/v1/retry/app", ""), Some(401));
    assert_eq!(code("POST", "/v1/retry/app", bad), Some(401));
    assert_ne!(code("POST", "/v1/retry/app", good), Some(401));
    let denied = http_request_with(addr, "GET", "/v1/status", "").unwrap().1;
    assert!(!denied.contains(&ns.ns), "a 401 shows no status: {denied}");

    // `berth status` sends the token from the config.
    let listen = addr.to_string();
    let base = ["--namespace", ns.ns.as_str(), "--listen", listen.as_str()];
    let mut with = vec!["status", "--json", "--http-token-file", token_arg];
    with.extend(base);
    let out = run_berth(&with, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains("no berth answering"),
        "berth status used the running berth: {stderr}"
    );
    let mut without = vec!["status", "--json"];
    without.extend(base);
    let out = run_berth(&without, Duration::from_secs(30));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "without the token: {stderr}");
    let mut retry = vec!["retry", "app", "--http-token-file", token_arg];
    retry.extend(base);
    let out = run_berth(&retry, Duration::from_secs(30));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn listening_beyond_loopback_without_a_token_is_warned_about() {
    let ns = TestNamespace::new("public");
    let dir = tempfile::tempdir().unwrap();
    let port = free_addr().port();
    let listen = format!("0.0.0.0:{port}");
    let berth = Berth::start(&ns, dir.path(), &["--listen", &listen, "--allow-empty"]);
    let line = berth.wait_for_log(Duration::from_secs(60), "without http.token_file");
    assert!(line.contains("WARN"), "{line}");

    let ns2 = TestNamespace::new("loopback");
    let quiet = Berth::start(&ns2, dir.path(), &["--allow-empty"]);
    quiet.wait_for_log(Duration::from_secs(60), "serving /healthz");
    assert!(!quiet.log().contains("without http.token_file"));
}
