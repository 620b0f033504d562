//! GitOps (issue 13): berth fetching a 20-task repository itself.
//!
//! - **push → container started**: a commit adding one task is pushed to a
//!   bare repository (`file://`); the time until its container runs, with
//!   the agent polling every second (so it includes the wait for the poll),
//!   and with `POST /v1/sync` right after the push (no poll wait).
//! - **berth's share beyond the poll**: with `POST /v1/sync`, from the
//!   request to the daemon's `Created` time of the new container (fetch,
//!   verify, check out, switch, pass, dispatch); Docker's create and start
//!   (`Created` → `State.StartedAt`) is shown apart.
//! - **idle cost of a poll**: CPU of berth and the git processes it ran
//!   (utime + stime + cutime + cstime) over an idle stretch, per poll.
//!
//! Its own namespace (`<bench namespace>g`), removed at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};

use crate::host::{write_manifest, Host};
use crate::report::{Row, Target};
use crate::scenarios::Results;
use crate::stats::{fmt_ms, ms, Summary};
use crate::{procfs, Options};

/// The repository's size (issue 13's figure is for 20 tasks).
const TASKS: usize = 20;
const INTERVAL: &str = "1s";

fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A bare repository and a working clone that commits and pushes to it.
struct Repo {
    root: PathBuf,
}

impl Repo {
    fn new(root: PathBuf) -> Result<Repo> {
        std::fs::create_dir_all(root.join("home"))?;
        let repo = Repo { root };
        run(repo
            .git(None)
            .args(["init", "-q", "--bare", "-b", "main"])
            .arg(repo.bare()))?;
        run(repo
            .git(None)
            .args(["init", "-q", "-b", "main"])
            .arg(repo.work()))?;
        std::fs::create_dir_all(repo.work().join("hosts"))?;
        Ok(repo)
    }
    fn bare(&self) -> PathBuf {
        self.root.join("remote.git")
    }
    fn work(&self) -> PathBuf {
        self.root.join("work")
    }
    fn hosts(&self) -> PathBuf {
        self.work().join("hosts")
    }
    fn git(&self, dir: Option<&Path>) -> Command {
        let mut cmd = Command::new("git");
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.root.join("home"))
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .args([
                "-c",
                "user.name=Bench",
                "-c",
                "user.email=bench@example.com",
            ]);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd
    }
    /// Commit everything in the working clone and push it.
    fn push(&self, message: &str) -> Result<()> {
        let work = self.work();
        run(self.git(Some(&work)).args(["add", "-A"]))?;
        run(self
            .git(Some(&work))
            .args(["commit", "-q", "--allow-empty", "-m", message]))?;
        run(self
            .git(Some(&work))
            .args(["push", "-q"])
            .arg(self.bare())
            .arg("HEAD:refs/heads/main"))?;
        Ok(())
    }
}

/// `2026-11-29T09:01:10.123456789Z` (Docker's form, always UTC).
fn parse_time(s: &str) -> Option<SystemTime> {
    let (date, time) = s.strip_suffix('Z')?.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<i64>());
    let (h, min, sec) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + h * 3600 + min * 60 + sec).ok()?;
    let digits: String = frac.chars().take(9).collect();
    let nanos: u64 = format!("{digits:0<9}").parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

/// When the daemon created and started `name`, once it runs.
async fn created_and_started(
    host: &Host,
    name: &str,
    deadline: Duration,
) -> Result<(SystemTime, SystemTime)> {
    let end = Instant::now() + deadline;
    loop {
        if let Ok(c) = host.docker.inspect_container(name, None).await {
            let state = c.state.as_ref();
            if state.and_then(|s| s.running) == Some(true) {
                let created = c.created.as_deref().and_then(parse_time);
                let started = state
                    .and_then(|s| s.started_at.as_deref())
                    .and_then(parse_time);
                if let (Some(c), Some(s)) = (created, started) {
                    return Ok((c, s));
                }
            }
        }
        if Instant::now() > end {
            bail!("{name} did not run within {deadline:?}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn since(t0: SystemTime, t: SystemTime) -> f64 {
    t.duration_since(t0).map(ms).unwrap_or(0.0)
}

/// A blocking `POST path` with no body; the status code.
fn post(addr: &str, path: &str) -> Result<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    raw.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")
}

/// CPU ticks of `pid` and of the children it has waited for.
fn cpu_with_children(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rfind(')').map(|i| &stat[i + 1..]).context("stat")?;
    let f: Vec<u64> = after
        .split_whitespace()
        .skip(11)
        .take(4)
        .filter_map(|v| v.parse().ok())
        .collect();
    Ok(f.iter().sum())
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn gitops(host: &Host, o: &Options, res: &mut Results) -> Result<()> {
    let ns = format!("{}g", host.namespace);
    let label = format!("io.berth.namespace={ns}");
    let result = measure(host, o, res, &ns, &label).await;
    host.remove_labelled(&label).await?;
    result
}

async fn measure(host: &Host, o: &Options, res: &mut Results, ns: &str, label: &str) -> Result<()> {
    let dir = host.work.path().join("gitops");
    let repo = Repo::new(dir.clone())?;
    for i in 0..TASKS {
        write_manifest(&repo.hosts(), &format!("g{i:02}"), &host.image, "0")?;
    }
    repo.push("20 tasks")?;
    let config = dir.join("berth.yaml");
    std::fs::write(
        &config,
        format!(
            "source:\n  git:\n    url: file://{}\n    ref: main\n    path: hosts\n    interval: {INTERVAL}\n",
            repo.bare().display()
        ),
    )?;
    let listen = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.to_string()
    };
    let agent = Agent(
        Command::new(&host.berth_bin)
            .arg("run")
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["--namespace", ns, "--listen", &listen])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(host.log("berth-gitops.log")?)
            .stderr(host.log("berth-gitops.log")?)
            .spawn()
            .context("starting berth with a git source")?,
    );
    let pid = agent.0.id();
    host.wait_running(label, TASKS, Duration::from_secs(120))
        .await?;

    let rounds = if o.quick { 3 } else { 10 };
    let (mut polled, mut synced, mut share, mut docker) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds * 2 {
        let with_sync = round % 2 == 1;
        let task = format!("n{round:02}");
        write_manifest(&repo.hosts(), &task, &host.image, "0")?;
        // Start the next push at a random phase of the poll.
        tokio::time::sleep(Duration::from_millis(137 * (round as u64 % 7) + 50)).await;
        tokio::task::block_in_place(|| repo.push(&task))?;
        let t0 = SystemTime::now();
        if with_sync {
            let code = tokio::task::block_in_place(|| post(&listen, "/v1/sync"))?;
            if code != 200 {
                bail!("POST /v1/sync answered {code}");
            }
        }
        let name = format!("{ns}-{task}-0");
        let (created, started) = created_and_started(host, &name, Duration::from_secs(30)).await?;
        if with_sync {
            synced.push(since(t0, started));
            share.push(since(t0, created));
            docker.push(since(created, started));
        } else {
            polled.push(since(t0, started));
        }
    }

    // Idle: no pushes, one poll a second.
    let idle = if o.quick {
        Duration::from_secs(10)
    } else {
        Duration::from_secs(30)
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = cpu_with_children(pid)?;
    let started = Instant::now();
    tokio::time::sleep(idle).await;
    let ticks = cpu_with_children(pid)?.saturating_sub(before);
    let polls = started.elapsed().as_secs_f64(); // one per second
    let per_poll_ms = ticks as f64 * 1000.0 / procfs::clock_ticks() as f64 / polls;
    let rss = procfs::rss_kib(pid).unwrap_or(0);
    drop(agent);

    let share_summary = Summary::of(&share);
    res.rows.push(Row::timed(
        "gitops push → started (poll 1 s)",
        "berth",
        Summary::of(&polled),
    ));
    res.rows.push(Row::timed(
        "gitops push → started (POST /v1/sync)",
        "berth",
        Summary::of(&synced),
    ));
    res.rows.push(Row::timed(
        "gitops berth's share (sync → Created)",
        "berth",
        share_summary,
    ));
    res.rows.push(Row::timed(
        "gitops Docker create + start",
        "docker",
        Summary::of(&docker),
    ));
    res.rows.push(Row::figure(
        "gitops idle CPU per poll (with git)",
        "berth",
        format!("{per_poll_ms:.1} ms"),
    ));
    res.notes.push(format!(
        "GitOps: a {TASKS}-task repository over file://, poll every {INTERVAL}; \
         each round pushes a commit adding one task. berth's share is from POST /v1/sync \
         to the daemon's Created time of the new container (fetch, verify, check out, \
         switch, pass, dispatch); idle CPU is berth plus the git processes it ran, over \
         {} s with no push ({} KiB RSS after).",
        idle.as_secs(),
        rss
    ));
    res.targets.push(Target::new(
        "GitOps: berth's share beyond the poll ≤ 300 ms (20 tasks)",
        share_summary.map_or_else(|| "-".into(), |s| fmt_ms(s.median)),
        share_summary.map(|s| s.median <= 300.0),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_times_parse_to_the_nanosecond() {
        let t = parse_time("2026-11-29T09:01:10.123456789Z").unwrap();
        let d = t.duration_since(UNIX_EPOCH).unwrap();
        assert_eq!(d.as_secs(), 1_795_942_870);
        assert_eq!(d.subsec_nanos(), 123_456_789);
        assert!(parse_time("2026-11-29T09:01:10Z").is_some());
        assert!(parse_time("junk").is_none());
    }
}
