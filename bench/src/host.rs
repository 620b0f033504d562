//! The three ways of running the same N containers, and cleaning them up:
//! berth (`run --once` on a folder of manifests), docker-compose (`up -d` on
//! an equivalent compose file), and the raw daemon (create + start through
//! the Docker API, `parallelism` at a time, as berth's apply does).
//!
//! Each subject has its own names so they never touch each other or the
//! containers of other people's tests on the same daemon: berth namespace
//! `bench-<tag>`, compose project `bench<tag>c`, raw containers named
//! `benchraw-<tag>-tNN` and labelled `io.berth-bench.raw=<tag>`.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use bollard::query_parameters::{
    CreateContainerOptions, ListContainersOptions, RemoveContainerOptions,
};
use bollard::Docker;
use futures_util::stream::{self, StreamExt, TryStreamExt};

pub const RAW_LABEL: &str = "io.berth-bench.raw";

/// Task `i`'s name, the same in all three subjects.
pub fn task_name(i: usize) -> String {
    format!("t{i:02}")
}

/// What a raw create+start cost, per container.
#[derive(Debug, Clone, Default)]
pub struct RawTimings {
    pub total: Duration,
    pub create_ms: Vec<f64>,
    pub start_ms: Vec<f64>,
}

pub struct Host {
    pub docker: Docker,
    pub image: String,
    pub berth_bin: PathBuf,
    pub tag: String,
    pub namespace: String,
    pub compose_project: String,
    pub parallelism: usize,
    /// `--listen` for berth: a free port, not the default 9797 that another
    /// berth on this host may hold.
    pub listen: String,
    /// Where manifests, the compose file and logs live.
    pub work: tempfile::TempDir,
    pub compose: bool,
}

impl Host {
    pub fn manifests(&self) -> PathBuf {
        self.work.path().join("manifests")
    }

    pub fn compose_file(&self) -> PathBuf {
        self.work.path().join("docker-compose.yml")
    }

    pub fn log(&self, name: &str) -> Result<File> {
        Ok(File::options()
            .create(true)
            .append(true)
            .open(self.work.path().join(name))?)
    }

    pub fn raw_name(&self, i: usize) -> String {
        format!("benchraw-{}-{}", self.tag, task_name(i))
    }

    /// One manifest per task; `version(i)` is the value of its `VERSION` env.
    pub fn write_manifests(&self, n: usize, version: &dyn Fn(usize) -> String) -> Result<()> {
        let dir = self.manifests();
        std::fs::create_dir_all(&dir)?;
        for i in 0..n {
            write_manifest(&dir, &task_name(i), &self.image, &version(i))?;
        }
        Ok(())
    }

    /// The compose twin of [`write_manifests`](Self::write_manifests):
    /// same image, command, environment; `network_mode: bridge` as berth's
    /// default, so compose creates no project network.
    pub fn write_compose(&self, n: usize, version: &dyn Fn(usize) -> String) -> Result<()> {
        let mut out = String::from("version: \"2.4\"\nservices:\n");
        for i in 0..n {
            out.push_str(&format!(
                "  {}:\n    image: {}\n    command: [\"sleep\", \"forever\"]\n    network_mode: bridge\n    environment:\n      VERSION: \"{}\"\n",
                task_name(i),
                self.image,
                version(i)
            ));
        }
        std::fs::write(self.compose_file(), out)?;
        Ok(())
    }

    fn berth(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.berth_bin);
        cmd.args(args)
            .arg("--manifests")
            .arg(self.manifests())
            .args(["--namespace", &self.namespace])
            .args(["--listen", &self.listen])
            .stdin(Stdio::null());
        cmd
    }

    /// `berth run --once`, timed from spawn to exit.
    pub fn berth_once(&self) -> Result<Duration> {
        let started = Instant::now();
        let status = self
            .berth(&["run", "--once"])
            .stdout(self.log("berth.log")?)
            .stderr(self.log("berth.log")?)
            .status()
            .context("running berth run --once")?;
        let took = started.elapsed();
        if !status.success() {
            bail!(
                "berth run --once failed ({status}); see {}",
                self.work.path().join("berth.log").display()
            );
        }
        Ok(took)
    }

    /// `berth run`, the agent, as a child process.
    pub fn berth_agent(&self) -> Result<std::process::Child> {
        Ok(self
            .berth(&["run"])
            .stdout(self.log("berth-agent.log")?)
            .stderr(self.log("berth-agent.log")?)
            .spawn()?)
    }

    pub fn berth_down(&self) -> Result<()> {
        let status = self
            .berth(&["down"])
            .stdout(self.log("berth.log")?)
            .stderr(self.log("berth.log")?)
            .status()?;
        if !status.success() {
            bail!("berth down failed ({status})");
        }
        Ok(())
    }

    fn compose_cmd(&self, args: &[&str]) -> Result<Command> {
        let mut cmd = Command::new("docker-compose");
        cmd.arg("-p")
            .arg(&self.compose_project)
            .arg("-f")
            .arg(self.compose_file())
            .args(args)
            .stdin(Stdio::null())
            .stdout(self.log("compose.log")?)
            .stderr(self.log("compose.log")?);
        Ok(cmd)
    }

    /// `docker-compose up -d`, timed from spawn to exit.
    pub fn compose_up(&self) -> Result<Duration> {
        let started = Instant::now();
        let status = self.compose_cmd(&["up", "-d"])?.status()?;
        let took = started.elapsed();
        if !status.success() {
            bail!("docker-compose up -d failed ({status})");
        }
        Ok(took)
    }

    pub fn compose_down(&self) -> Result<()> {
        self.compose_down_grace(1)
    }

    /// `docker-compose down -t SECS`.
    pub fn compose_down_grace(&self, secs: u64) -> Result<()> {
        let secs = secs.to_string();
        let status = self.compose_cmd(&["down", "-t", &secs])?.status()?;
        if !status.success() {
            bail!("docker-compose down failed ({status})");
        }
        Ok(())
    }

    /// Ids of containers (any state) carrying `label`.
    pub async fn ids_with_label(&self, label: &str, running_only: bool) -> Result<Vec<String>> {
        let mut filters = HashMap::from([("label".to_string(), vec![label.to_string()])]);
        if running_only {
            filters.insert("status".into(), vec!["running".into()]);
        }
        let list = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await?;
        Ok(list.into_iter().filter_map(|c| c.id).collect())
    }

    pub fn berth_label(&self) -> String {
        format!("io.berth.namespace={}", self.namespace)
    }

    pub fn compose_label(&self) -> String {
        format!("com.docker.compose.project={}", self.compose_project)
    }

    pub fn raw_label(&self) -> String {
        format!("{RAW_LABEL}={}", self.tag)
    }

    /// The raw baseline: create and start `n` containers equivalent to
    /// berth's (same image, command, env and a similar label set),
    /// `parallelism` at a time, each create followed by its start.
    pub async fn raw_up(&self, n: usize) -> Result<RawTimings> {
        self.raw_up_env(n, &[]).await
    }

    /// [`raw_up`](Self::raw_up) with extra `KEY=value` environment entries
    /// (e.g. `FIXTURE_ON_TERM=ignore` for slow stoppers).
    pub async fn raw_up_env(&self, n: usize, extra_env: &[String]) -> Result<RawTimings> {
        let started = Instant::now();
        let per: Vec<(f64, f64)> = stream::iter(0..n)
            .map(|i| self.raw_one(i, extra_env))
            .buffer_unordered(self.parallelism.max(1))
            .try_collect()
            .await?;
        Ok(RawTimings {
            total: started.elapsed(),
            create_ms: per.iter().map(|p| p.0).collect(),
            start_ms: per.iter().map(|p| p.1).collect(),
        })
    }

    async fn raw_one(&self, i: usize, extra_env: &[String]) -> Result<(f64, f64)> {
        let task = task_name(i);
        let labels = HashMap::from([
            (RAW_LABEL.to_string(), self.tag.clone()),
            ("io.berth-bench.task".to_string(), task.clone()),
            ("io.berth-bench.index".to_string(), "0".to_string()),
            ("io.berth-bench.spec-hash".to_string(), "0".repeat(64)),
            (
                "io.berth-bench.manifest".to_string(),
                format!("{task}.yaml"),
            ),
        ]);
        let mut env = vec![
            "BERTH_INDEX=0".into(),
            format!("BERTH_NAMESPACE={}", self.namespace),
            format!("BERTH_TASK={task}"),
            "VERSION=0".into(),
        ];
        env.extend(extra_env.iter().cloned());
        let body = ContainerCreateBody {
            image: Some(self.image.clone()),
            cmd: Some(vec!["sleep".into(), "forever".into()]),
            env: Some(env),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some("bridge".into()),
                privileged: Some(false),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let t0 = Instant::now();
        let created = self
            .docker
            .create_container(
                Some(CreateContainerOptions {
                    name: Some(self.raw_name(i)),
                    ..Default::default()
                }),
                body,
            )
            .await?;
        let t1 = Instant::now();
        self.docker.start_container(&created.id, None).await?;
        let t2 = Instant::now();
        Ok((crate::stats::ms(t1 - t0), crate::stats::ms(t2 - t1)))
    }

    /// Force-remove every container carrying `label`, 4 at a time.
    pub async fn remove_labelled(&self, label: &str) -> Result<()> {
        let ids = self.ids_with_label(label, false).await?;
        stream::iter(ids)
            .map(|id| async move {
                match self
                    .docker
                    .remove_container(
                        &id,
                        Some(RemoveContainerOptions {
                            force: true,
                            v: true,
                            ..Default::default()
                        }),
                    )
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(bollard::errors::Error::DockerResponseServerError {
                        status_code: 404,
                        ..
                    }) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .buffer_unordered(4)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Remove everything the benchmark made, whoever made it.
    pub async fn remove_all(&self) -> Result<()> {
        for label in [self.berth_label(), self.compose_label(), self.raw_label()] {
            self.remove_labelled(&label).await?;
        }
        Ok(())
    }

    /// Wait until exactly `n` containers with `label` run.
    pub async fn wait_running(&self, label: &str, n: usize, deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            let running = self.ids_with_label(label, true).await?.len();
            if running == n {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("{running} containers with {label} run, expected {n}, after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Wait until no container with `label` exists.
    pub async fn wait_gone(&self, label: &str, deadline: Duration) -> Result<()> {
        let end = Instant::now() + deadline;
        loop {
            let left = self.ids_with_label(label, false).await?.len();
            if left == 0 {
                return Ok(());
            }
            if Instant::now() > end {
                bail!("{left} containers with {label} left after {deadline:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A one-task manifest file, written whole in one call.
pub fn write_manifest(dir: &Path, task: &str, image: &str, version: &str) -> Result<()> {
    write_manifest_with(dir, task, image, &["sleep", "forever"], version, "")
}

/// A one-task manifest with its own args and extra YAML. `extra` follows the
/// `VERSION` line of the env mapping: lines indented by two add env entries,
/// unindented lines add top-level keys.
pub fn write_manifest_with(
    dir: &Path,
    task: &str,
    image: &str,
    args: &[&str],
    version: &str,
    extra: &str,
) -> Result<()> {
    let args = args
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let text = format!(
        "name: {task}\nimage: {image}\nargs: [{args}]\nenv:\n  VERSION: \"{version}\"\n{extra}"
    );
    std::fs::write(dir.join(format!("{task}.yaml")), text)?;
    Ok(())
}
