//! Task options against the real Docker daemon, driven through the `berth`
//! binary (`run --once`, `validate`): ports, environment and interpolation,
//! resources and other create options, private registries and pull
//! failures, image cleanup, and the agent's permissions.
//!
//! Each test owns a namespace (its guard removes what it made), its own
//! manifest folder and agent config, and its own host port range.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{docker, fixture_image, fixture_image_copy, run_berth, wait_for_sync, TestNamespace};
use sha2::{Digest, Sha256};

const RUN: Duration = Duration::from_secs(150);

/// A test's world: namespace, manifest folder, agent config, port range.
struct World {
    ns: TestNamespace,
    dir: tempfile::TempDir,
    config: PathBuf,
    port_min: u16,
}

impl World {
    /// `extra` is appended to the agent config (YAML at the top level).
    fn new(test: &str, extra: &str) -> World {
        let ns = TestNamespace::new(test);
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("m")).unwrap();
        let port_min = free_range(&ns.ns, 8);
        let world = World {
            config: dir.path().join("berth.yaml"),
            ns,
            dir,
            port_min,
        };
        world.write_config(extra);
        world
    }

    fn write_config(&self, extra: &str) {
        let text = format!(
            "manifests: {}\nnamespace: {}\nports: {{min: {}, max: {}}}\n{extra}\n",
            self.manifests().display(),
            self.ns.ns,
            self.port_min,
            self.port_min + 7
        );
        std::fs::write(&self.config, text).unwrap();
    }

    fn manifests(&self) -> PathBuf {
        self.dir.path().join("m")
    }

    fn write(&self, file: &str, text: &str) {
        let tmp = self.dir.path().join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.manifests().join(file)).unwrap();
    }

    fn delete(&self, file: &str) {
        std::fs::remove_file(self.manifests().join(file)).unwrap();
    }

    /// `berth run --once` with this world's config; returns (success, stdout+stderr).
    fn run_once(&self, timeout: &str) -> (bool, String) {
        let out = run_berth(
            &[
                "run",
                "--once",
                "--once-timeout",
                timeout,
                "--config",
                self.config.to_str().unwrap(),
            ],
            RUN,
        );
        (out.status.success(), common::output_text(&out))
    }

    fn converge(&self) -> String {
        let (ok, out) = self.run_once("60s");
        assert!(ok, "run --once did not converge:\n{out}");
        out
    }

    fn name(&self, task: &str) -> String {
        self.ns.container_name(task, 0)
    }

    fn inspect(&self, task: &str) -> serde_json::Value {
        docker::inspect(&self.name(task)).unwrap_or_else(|| panic!("no container for {task}"))
    }
}

fn port_is_free(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok() && UdpSocket::bind(("0.0.0.0", port)).is_ok()
}

/// A block of `n` host ports free right now, at a place derived from the
/// namespace so parallel tests (and other suites on the default range) do
/// not meet.
fn free_range(seed: &str, n: u16) -> u16 {
    let h = Sha256::digest(seed.as_bytes());
    let start = 40000 + (u16::from_le_bytes([h[0], h[1]]) % 2000) * 10;
    (0..200u16)
        .map(|i| 40000 + (start - 40000 + i * 10) % 20000)
        .find(|&base| (base..base + n).all(port_is_free))
        .expect("no free block of host ports")
}

fn fixture_task(name: &str, args: &str, extra: &str) -> String {
    format!(
        "name: {name}\nimage: {}\nargs: {args}\n{extra}\n",
        fixture_image()
    )
}

fn labels_of(v: &serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    v["Config"]["Labels"]
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn env_of(v: &serde_json::Value) -> Vec<String> {
    v["Config"]["Env"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `docker port NAME` → the host ports published for `container_port/proto`.
fn docker_port(name: &str, spec: &str) -> Vec<u16> {
    let out = Command::new("docker")
        .args(["port", name, spec])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.rsplit(':').next()?.trim().parse().ok())
        .collect()
}

fn http_get(port: u16) -> Option<String> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    body.starts_with("HTTP/1.0 200").then_some(body)
}

fn udp_echo(port: u16) -> Option<String> {
    let s = UdpSocket::bind("127.0.0.1:0").ok()?;
    s.set_read_timeout(Some(Duration::from_millis(500))).ok()?;
    s.send_to(b"berth-ping", ("127.0.0.1", port)).ok()?;
    let mut buf = [0u8; 64];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn logs(name: &str) -> String {
    let out = Command::new("docker")
        .args(["logs", name])
        .output()
        .unwrap();
    common::output_text(&out)
}

fn image_exists(image: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        common::output_text(&out)
    );
}

#[test]
fn a_dynamic_port_is_published_for_tcp_and_udp_and_survives_replacements_and_restarts() {
    let w = World::new("ports", "");
    let manifest = |v: &str| {
        fixture_task(
            "web",
            r#"["serve-http", "BERTH_PORT_http"]"#,
            &format!("ports: {{http: {{}}}}\nport_map: {{http: 8080}}\nenv: {{VERSION: \"{v}\"}}"),
        )
    };
    w.write("web.yaml", &manifest("1"));
    w.converge();

    let name = w.name("web");
    let tcp = docker_port(&name, "8080/tcp");
    let udp = docker_port(&name, "8080/udp");
    assert!(!tcp.is_empty(), "no tcp binding");
    let host_port = tcp[0];
    assert!(
        tcp.iter().all(|p| *p == host_port) && udp.contains(&host_port),
        "{tcp:?} {udp:?}"
    );
    assert!(
        (w.port_min..w.port_min + 8).contains(&host_port),
        "{host_port}"
    );
    let first = w.inspect("web");
    let env = env_of(&first);
    assert!(env.contains(&"BERTH_PORT_http=8080".to_string()), "{env:?}");
    assert!(
        env.contains(&format!("BERTH_HOST_PORT_http={host_port}")),
        "{env:?}"
    );
    assert!(
        env.iter()
            .any(|e| e.starts_with("BERTH_ADDR_http=") && e.ends_with(&format!(":{host_port}"))),
        "{env:?}"
    );
    assert_eq!(
        labels_of(&first)["io.berth.port.http"],
        host_port.to_string()
    );
    let body = wait_for_sync(
        Duration::from_secs(20),
        "HTTP answer on the host port",
        || http_get(host_port),
    );
    assert!(body.ends_with("ok"), "{body}");
    let echo = wait_for_sync(Duration::from_secs(20), "UDP echo on the host port", || {
        udp_echo(host_port)
    });
    assert_eq!(echo, "berth-ping");

    // Each `run --once` is a new berth process: the port comes back from the label.
    for version in ["2", "3"] {
        w.write("web.yaml", &manifest(version));
        w.converge();
        let now = w.inspect("web");
        assert_ne!(
            now["Id"], first["Id"],
            "the env change must replace the container"
        );
        assert_eq!(docker_port(&name, "8080/tcp")[0], host_port);
        assert!(docker_port(&name, "8080/udp").contains(&host_port));
        wait_for_sync(Duration::from_secs(20), "HTTP after replacement", || {
            http_get(host_port)
        });
    }
}

#[test]
fn two_tasks_never_share_a_dynamic_port_and_a_port_held_on_the_host_is_skipped() {
    let w = World::new("portshare", "");
    // The test's own listener holds the lowest port of the range.
    let _held = TcpListener::bind(("0.0.0.0", w.port_min)).unwrap();
    for task in ["a", "b"] {
        w.write(
            &format!("{task}.yaml"),
            &fixture_task(task, r#"["sleep"]"#, "ports: {http: {}}"),
        );
    }
    w.converge();
    let port = |task: &str| -> u16 {
        labels_of(&w.inspect(task))["io.berth.port.http"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (a, b) = (port("a"), port("b"));
    assert_ne!(a, b);
    for p in [a, b] {
        assert_ne!(p, w.port_min, "the port held by the test was handed out");
        assert!((w.port_min..w.port_min + 8).contains(&p));
    }
}

#[test]
fn environment_interpolation_and_env_files_reach_the_process_and_secrets_stay_out_of_output() {
    let w = World::new("env", "meta: {site: berlin}");
    std::fs::write(w.manifests().join("m-secret"), "hunter2-first\n").unwrap();
    let secret_file = w.manifests().join("m-secret");
    let manifest = format!(
        "{}env:\n  SITE: \"${{meta.site}}\"\n  HOST: \"${{node.hostname}}\"\n  GREETING: hello\n  REF: \"${{GREETING}}-${{BERTH_TASK}}\"\n  LITERAL: \"$${{NOT_A_VAR}}\"\n  TOKEN: {{file: {}, secret: true}}\nlabels: {{site: \"${{meta.site}}\"}}\nhostname: \"h-${{BERTH_INDEX}}\"\n",
        fixture_task("env", r#"["env"]"#, ""),
        secret_file.display()
    );
    w.write("env.yaml", &manifest);
    let out = w.converge();
    assert!(!out.contains("hunter2"), "secret in berth's output:\n{out}");

    let name = w.name("env");
    let printed = wait_for_sync(Duration::from_secs(20), "env output", || {
        let l = logs(&name);
        l.contains("TOKEN=").then_some(l)
    });
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for line in [
        "BERTH_TASK=env".to_string(),
        "BERTH_INDEX=0".to_string(),
        format!("BERTH_NAMESPACE={}", w.ns.ns),
        "SITE=berlin".to_string(),
        format!("HOST={}", hostname.trim()),
        "REF=hello-env".to_string(),
        "LITERAL=${NOT_A_VAR}".to_string(),
        "TOKEN=hunter2-first".to_string(),
        "HOSTNAME=h-0".to_string(),
    ] {
        assert!(
            printed.lines().any(|l| l == line),
            "missing {line} in:\n{printed}"
        );
    }
    let first = w.inspect("env");
    assert_eq!(labels_of(&first)["site"], "berlin");
    let all_labels = serde_json::to_string(&labels_of(&first)).unwrap();
    assert!(!all_labels.contains("hunter2"), "{all_labels}");

    // A changed file replaces the container at the next pass; the new value
    // shows up neither in berth's logs (debug level) nor in `plan`.
    std::fs::write(&secret_file, "hunter2-second\n").unwrap();
    let plan = run_berth(&["plan", "--config", w.config.to_str().unwrap()], RUN);
    assert_eq!(
        plan.status.code(),
        Some(2),
        "{}",
        common::output_text(&plan)
    );
    assert!(
        !common::output_text(&plan).contains("hunter2"),
        "{}",
        common::output_text(&plan)
    );
    let out = common::berth_command()
        .args(["run", "--once", "--config", w.config.to_str().unwrap()])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", common::output_text(&out));
    assert!(
        !common::output_text(&out).contains("hunter2"),
        "secret in debug logs"
    );
    let second = w.inspect("env");
    assert_ne!(first["Id"], second["Id"]);
    wait_for_sync(
        Duration::from_secs(20),
        "the new secret in the process",
        || logs(&name).contains("TOKEN=hunter2-second").then_some(()),
    );

    // An unknown name is a validation error with file:line:column.
    let bad = w.dir.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    std::fs::write(
        bad.join("bad.yaml"),
        "image: x\nenv:\n  A: \"${meta.nope}\"\n",
    )
    .unwrap();
    let v = run_berth(
        &[
            "validate",
            "--config",
            w.config.to_str().unwrap(),
            bad.to_str().unwrap(),
        ],
        RUN,
    );
    let msg = common::output_text(&v);
    assert_eq!(v.status.code(), Some(1), "{msg}");
    assert!(msg.contains("bad.yaml:3:"), "{msg}");
    assert!(msg.contains("meta.nope"), "{msg}");
}

#[test]
fn resources_and_create_options_reach_docker() {
    let w = World::new("resources", "");
    w.write(
        "res.yaml",
        &fixture_task(
            "res",
            r#"["sleep"]"#,
            "resources: {cpu: 250, memory: 64}\ndns_servers: [\"1.1.1.1\"]\ndns_search_domains: [\"lan\"]\nhostname: res-host\nlabels: {group: webservice-cache}\nstop_timeout: 3s",
        ),
    );
    w.write(
        "none.yaml",
        &fixture_task("none", r#"["sleep"]"#, "network_mode: none"),
    );
    w.converge();
    let c = w.inspect("res");
    let hc = &c["HostConfig"];
    assert_eq!(hc["Memory"], 67108864);
    assert_eq!(hc["MemorySwap"], 67108864);
    assert_eq!(hc["CpuShares"], 250);
    assert_eq!(hc["Dns"], serde_json::json!(["1.1.1.1"]));
    assert_eq!(hc["DnsSearch"], serde_json::json!(["lan"]));
    assert_eq!(hc["NetworkMode"], "bridge");
    assert_eq!(c["Config"]["Hostname"], "res-host");
    assert_eq!(labels_of(&c)["group"], "webservice-cache");
    let env = env_of(&c);
    assert!(
        env.contains(&"BERTH_MEMORY_LIMIT=64".to_string()),
        "{env:?}"
    );
    assert!(env.contains(&"BERTH_CPU_LIMIT=250".to_string()), "{env:?}");
    assert_eq!(w.inspect("none")["HostConfig"]["NetworkMode"], "none");
}

#[test]
fn privileged_and_host_modes_need_the_agent_permission() {
    let w = World::new("privileged", "");
    w.write(
        "priv.yaml",
        &fixture_task(
            "priv",
            r#"["sleep"]"#,
            "privileged: true\npid_mode: host\nipc_mode: host\nuts_mode: host",
        ),
    );
    let v = run_berth(&["validate", "--config", w.config.to_str().unwrap()], RUN);
    let msg = common::output_text(&v);
    assert_eq!(v.status.code(), Some(1), "{msg}");
    for key in ["privileged", "pid_mode", "ipc_mode", "uts_mode"] {
        assert!(msg.contains(key), "{key} not named:\n{msg}");
    }
    assert!(msg.contains("docker.privileged.enabled: true"), "{msg}");
    let (ok, out) = w.run_once("10s");
    assert!(!ok && out.contains("docker.privileged.enabled"), "{out}");
    assert!(docker::inspect(&w.name("priv")).is_none());

    w.write_config("docker: {privileged: {enabled: true}}");
    if daemon_can_run_privileged() {
        w.converge();
    } else {
        // A daemon inside an unprivileged container cannot grant the caps:
        // berth still creates the container as asked, Docker refuses to start it.
        eprintln!("note: this Docker daemon cannot start privileged containers; checking the created container only");
        let (ok, out) = w.run_once("3s");
        assert!(!ok && out.contains("caps"), "{out}");
    }
    let hc = w.inspect("priv")["HostConfig"].clone();
    assert_eq!(hc["Privileged"], true);
    assert_eq!(hc["PidMode"], "host");
    assert_eq!(hc["IpcMode"], "host");
    assert_eq!(hc["UTSMode"], "host");

    // The host modes alone run everywhere.
    w.delete("priv.yaml");
    w.write(
        "modes.yaml",
        &fixture_task(
            "modes",
            r#"["sleep"]"#,
            "pid_mode: host\nipc_mode: host\nuts_mode: host",
        ),
    );
    w.converge();
    let c = w.inspect("modes");
    assert_eq!(c["State"]["Running"], true);
    assert_eq!(c["HostConfig"]["PidMode"], "host");
    assert_eq!(c["HostConfig"]["Privileged"], false);

    // Host bind mounts are refused when the agent says so.
    w.write_config("docker: {privileged: {enabled: true}, volumes: {enabled: false}}");
    w.write(
        "vol.yaml",
        &fixture_task("vol", r#"["sleep"]"#, "volumes: [\"/tmp:/host-tmp:ro\"]"),
    );
    let v = run_berth(&["validate", "--config", w.config.to_str().unwrap()], RUN);
    assert_eq!(v.status.code(), Some(1));
    assert!(
        common::output_text(&v).contains("docker.volumes.enabled: true"),
        "{}",
        common::output_text(&v)
    );
}

fn daemon_can_run_privileged() -> bool {
    Command::new("docker")
        .args(["run", "--rm", "--privileged", &fixture_image(), "exit", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A foreign container (not berth's) removed when the test ends.
struct Foreign(String);
impl Drop for Foreign {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn image_cleanup_removes_only_images_no_container_uses() {
    let w = World::new("cleanup", "");
    let tag = |t: &str| format!("berth-opt-{t}:{}", w.ns.ns);
    let (gone, shared, foreign) = (tag("gone"), tag("shared"), tag("foreign"));
    for image in [&gone, &shared, &foreign] {
        fixture_image_copy(image);
        w.ns.track_image(image);
    }
    let task =
        |name: &str, image: &str| format!("name: {name}\nimage: {image}\nargs: [\"sleep\"]\n");
    w.write("gone.yaml", &task("gone", &gone));
    w.write("s1.yaml", &task("s1", &shared));
    w.write("s2.yaml", &task("s2", &shared));
    w.write("f.yaml", &task("f", &foreign));
    w.converge();
    let foreign_name = format!("{}-foreign", w.ns.ns);
    let _foreign = Foreign(foreign_name.clone());
    sh(&[
        "docker",
        "run",
        "-d",
        "--name",
        &foreign_name,
        &foreign,
        "sleep",
    ]);

    for f in ["gone.yaml", "s1.yaml", "f.yaml"] {
        w.delete(f);
    }
    w.converge();
    assert!(
        !image_exists(&gone),
        "the deleted task's image is still there"
    );
    assert!(
        image_exists(&shared),
        "an image another task uses was removed"
    );
    assert!(
        image_exists(&foreign),
        "an image a foreign container uses was removed"
    );
    assert!(docker::inspect(&w.name("s2")).is_some());

    // cleanup.image: false keeps images.
    let kept = tag("kept");
    fixture_image_copy(&kept);
    w.ns.track_image(&kept);
    w.write_config("docker: {cleanup: {image: false}}");
    w.write("k.yaml", &task("k", &kept));
    w.converge();
    w.delete("k.yaml");
    w.converge();
    assert!(docker::inspect(&w.name("k")).is_none());
    assert!(image_exists(&kept));
}

// ---------------------------------------------------------------- registry

const USER: &str = "deploy";
const PASSWORD: &str = "s3cret-Pa55word";

/// A `docker-registry` on 127.0.0.1 with htpasswd auth; killed on drop.
struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
}

impl Registry {
    /// `None` (with the reason printed) when the registry is not installed.
    fn start() -> Option<Registry> {
        for tool in ["docker-registry", "htpasswd"] {
            let found = Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if !found {
                eprintln!("SKIPPED: {tool} is not installed (apt-get install docker-registry apache2-utils)");
                return None;
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let htpasswd = Command::new("htpasswd")
            .args(["-Bbn", USER, PASSWORD])
            .output()
            .unwrap();
        assert!(htpasswd.status.success());
        std::fs::write(dir.path().join("htpasswd"), &htpasswd.stdout).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        std::fs::write(
            dir.path().join("config.yml"),
            format!(
                "version: 0.1\nlog: {{level: error}}\nstorage:\n  filesystem: {{rootdirectory: {}}}\nhttp:\n  addr: 127.0.0.1:{port}\nauth:\n  htpasswd: {{realm: berth, path: {}}}\n",
                dir.path().join("data").display(),
                dir.path().join("htpasswd").display()
            ),
        )
        .unwrap();
        let mut r = Registry {
            dir,
            port,
            child: None,
        };
        r.resume();
        Some(r)
    }

    fn resume(&mut self) {
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(self.dir.path().join("config.yml"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.port;
        wait_for_sync(Duration::from_secs(20), "the registry to listen", || {
            TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        });
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn image(&self, tag: &str) -> String {
        format!("127.0.0.1:{}/berth/app:{tag}", self.port)
    }

    /// Push the fixture image as each tag, with a throwaway docker CLI config
    /// (the login never touches ~/.docker), then drop the local tags.
    fn push(&self, tags: &[&str]) {
        let cli = self.dir.path().join("docker-cli");
        std::fs::create_dir_all(&cli).unwrap();
        let docker = |args: &[&str], stdin: Option<&str>| {
            let mut child = Command::new("docker")
                .env("DOCKER_CONFIG", &cli)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            if let Some(input) = stdin {
                child
                    .stdin
                    .take()
                    .unwrap()
                    .write_all(input.as_bytes())
                    .unwrap();
            }
            drop(child.stdin.take());
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "docker {args:?}: {}",
                common::output_text(&out)
            );
        };
        let host = format!("127.0.0.1:{}", self.port);
        docker(
            &["login", "-u", USER, "--password-stdin", &host],
            Some(PASSWORD),
        );
        for tag in tags {
            let image = self.image(tag);
            docker(&["tag", &fixture_image(), &image], None);
            docker(&["push", &image], None);
            docker(&["rmi", &image], None);
        }
        docker(&["logout", &host], None);
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn auth_task(name: &str, image: &str, password_file: &Path) -> String {
    format!(
        "name: {name}\nimage: {image}\nargs: [\"sleep\"]\nauth:\n  username: {USER}\n  password_file: {}\n",
        password_file.display()
    )
}

#[test]
fn private_registry_pulls_with_task_auth_and_auth_config_and_wrong_credentials_back_off() {
    let Some(registry) = Registry::start() else {
        return;
    };
    let w = World::new("registry", "");
    registry.push(&["v1", "v2", "v3"]);
    for t in ["v1", "v2", "v3"] {
        w.ns.track_image(&registry.image(t));
        assert!(!image_exists(&registry.image(t)));
    }
    let good = w.manifests().join("password");
    std::fs::write(&good, format!("{PASSWORD}\n")).unwrap();

    // 1. The task's own auth, from a password file.
    w.write("a.yaml", &auth_task("a", &registry.image("v1"), &good));
    let out = w.converge();
    assert!(!out.contains(PASSWORD), "password in berth's output");
    assert_eq!(w.inspect("a")["Config"]["Image"], registry.image("v1"));

    // 2. The agent's auth_config (config.json, base64 `auth`).
    let auth_json = w.dir.path().join("config.json");
    std::fs::write(
        &auth_json,
        format!(
            r#"{{"auths": {{"127.0.0.1:{}": {{"auth": "{}"}}}}}}"#,
            registry.port,
            base64(format!("{USER}:{PASSWORD}").as_bytes())
        ),
    )
    .unwrap();
    w.write_config(&format!("docker: {{auth_config: {}}}", auth_json.display()));
    w.write(
        "b.yaml",
        &format!(
            "name: b\nimage: {}\nargs: [\"sleep\"]\n",
            registry.image("v2")
        ),
    );
    let out = w.converge();
    assert!(!out.contains(PASSWORD));
    assert_eq!(w.inspect("b")["Config"]["Image"], registry.image("v2"));

    // 3. A wrong password: reported, backed off, never printed.
    let wrong = w.manifests().join("wrong");
    let wrong_password = "not-the-Pa55word";
    std::fs::write(&wrong, wrong_password).unwrap();
    w.write("c.yaml", &auth_task("c", &registry.image("v3"), &wrong));
    let out = common::berth_command()
        .args([
            "run",
            "--once",
            "--once-timeout",
            "6s",
            "--config",
            w.config.to_str().unwrap(),
        ])
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    let msg = common::output_text(&out);
    assert!(!out.status.success(), "{msg}");
    assert!(
        msg.contains(&registry.image("v3")),
        "the failing image is not named:\n{msg}"
    );
    assert!(msg.contains("backing off"), "{msg}");
    assert!(
        !msg.contains(wrong_password) && !msg.contains(PASSWORD),
        "a password was printed"
    );
    assert!(docker::inspect(&w.name("c")).is_none());
    // The other tasks were untouched.
    assert_eq!(w.inspect("a")["State"]["Running"], true);
    assert_eq!(w.inspect("b")["State"]["Running"], true);
}

#[test]
fn a_registry_outage_during_an_image_change_keeps_the_old_container_running() {
    let Some(mut registry) = Registry::start() else {
        return;
    };
    let w = World::new("outage", "");
    registry.push(&["v1", "v2"]);
    for t in ["v1", "v2"] {
        w.ns.track_image(&registry.image(t));
    }
    let password = w.manifests().join("password");
    std::fs::write(&password, PASSWORD).unwrap();
    w.write(
        "app.yaml",
        &auth_task("app", &registry.image("v1"), &password),
    );
    w.converge();
    let before = w.inspect("app");

    registry.stop();
    w.write(
        "app.yaml",
        &auth_task("app", &registry.image("v2"), &password),
    );
    let (ok, out) = w.run_once("5s");
    assert!(!ok, "{out}");
    assert!(out.contains(&registry.image("v2")), "{out}");
    let during = w.inspect("app");
    assert_eq!(during["Id"], before["Id"], "the old container was replaced");
    assert_eq!(
        during["State"]["Running"], true,
        "the old container was stopped"
    );
    assert_eq!(docker::ps(&w.ns.ns).len(), 1);

    registry.resume();
    w.converge();
    let after = w.inspect("app");
    assert_ne!(after["Id"], before["Id"]);
    assert_eq!(after["Config"]["Image"], registry.image("v2"));
    assert_eq!(after["State"]["Running"], true);
}
