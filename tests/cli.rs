//! The command line as a user meets it: every agent key is a flag and a
//! `BERTH_*` variable with help and its default, usage errors exit 64 (never
//! `plan`'s 2), host commands say which config they use, `berth config`
//! tells where each value came from. Needs no Docker.

mod common;

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use common::{berth_command, run_berth};

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every key path of deploy/berth.yaml, the commented-out examples included
/// (`# endpoint: ...` lines are keys a person would uncomment).
fn sample_config_keys() -> Vec<String> {
    let sample = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("deploy/berth.yaml"),
    )
    .unwrap();
    let uncommented: String = sample
        .lines()
        .map(|line| {
            let indent = line.len() - line.trim_start().len();
            let rest = line.trim_start();
            let Some(body) = rest.strip_prefix("# ") else {
                return line.to_string();
            };
            // `#   git:` under `# source:`: the comment's own indent counts.
            let inner = body.trim_start();
            // `key: value` where the value is one word or a flow map, not prose.
            let is_key = inner.split_once(':').is_some_and(|(k, v)| {
                let v = v.split(" #").next().unwrap_or_default().trim();
                !k.is_empty()
                    && k.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && (v.starts_with('{') || !v.contains(' '))
            });
            if is_key {
                format!("{}{}", " ".repeat(indent), body)
            } else {
                String::new()
            }
        })
        .map(|l| l + "\n")
        .collect();
    let doc: serde_json::Value =
        serde_saphyr::from_str(&uncommented).unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
    fn walk(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) if !map.is_empty() && prefix != "meta" => {
                for (k, v) in map {
                    let p = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(v, &p, out);
                }
            }
            _ => out.push(prefix.to_string()),
        }
    }
    let mut keys = Vec::new();
    walk(&doc, "", &mut keys);
    keys
}

#[test]
fn every_key_of_the_sample_config_is_a_flag_and_a_variable_with_help_and_default() {
    let keys = sample_config_keys();
    // The sample's commented examples are part of what it documents.
    for expected in [
        "docker.endpoint",
        "docker.tls.ca",
        "source.git.verify.allowed_signers",
        "meta",
    ] {
        assert!(
            keys.iter().any(|k| k == expected),
            "{expected} not found in {keys:?}"
        );
    }
    let out = run_berth(&["run", "--help"], Duration::from_secs(10));
    assert!(out.status.success());
    let (help, _) = text(&out);
    for key in &keys {
        let flag = key
            .strip_suffix(".enabled")
            .unwrap_or(key)
            .replace(['.', '_'], "-");
        let env = format!("BERTH_{}", flag.to_uppercase().replace('-', "_"));
        let entry = help
            .split("\n      --")
            .find(|e| e.starts_with(&format!("{flag} ")) || e.starts_with(&format!("{flag}[")))
            .unwrap_or_else(|| panic!("berth run --help has no --{flag} for {key}:\n{help}"));
        assert!(
            entry.contains(&format!("[env: {env}=")),
            "--{flag} has no {env}: {entry}"
        );
        assert!(
            entry.contains("[default: "),
            "--{flag} shows no default: {entry}"
        );
        let described = entry
            .lines()
            .skip(1)
            .any(|l| l.trim().len() > "[default: x]".len() + 10);
        assert!(described, "--{flag} has no help text: {entry}");
    }
}

#[test]
fn usage_errors_exit_64_not_plans_2() {
    for args in [
        &["plan", "--bogus"][..],
        &["status", "--json", "extra"][..],
        &["run", "--parallelism", "many"][..],
        &["down", "--resync", "10"][..],
        &["nosuchcommand"][..],
        &[][..],
    ] {
        let out = run_berth(args, Duration::from_secs(10));
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(64), "berth {args:?}: {err}");
        assert!(
            err.contains("Usage:") || err.contains("--help"),
            "berth {args:?}: {err}"
        );
    }
    for args in [&["--help"][..], &["plan", "--help"][..], &["--version"][..]] {
        let out = run_berth(args, Duration::from_secs(10));
        assert_eq!(out.status.code(), Some(0), "berth {args:?}");
    }
}

#[test]
fn host_commands_say_which_config_they_use() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    // An address nothing answers on: status falls back to Docker's labels.
    std::fs::write(
        &config,
        format!(
            "manifests: {}\nnamespace: cli-which-config\nlisten: 127.0.0.1:9\n",
            dir.path().join("none").display()
        ),
    )
    .unwrap();
    for command in ["plan", "status", "down", "config"] {
        let mut args = vec![command, "--config", config.to_str().unwrap()];
        if command == "down" {
            args.push("--dry-run");
        }
        let out = run_berth(&args, Duration::from_secs(30));
        let (_, err) = text(&out);
        let first = err.lines().next().unwrap_or_default();
        assert_eq!(
            first,
            format!("berth: config {}", config.display()),
            "berth {command}: {err}"
        );
    }
    // BERTH_CONFIG is --config.
    let out = berth_command()
        .args(["config"])
        .env("BERTH_CONFIG", &config)
        .output()
        .unwrap();
    let (stdout, err) = text(&out);
    assert!(
        err.starts_with(&format!("berth: config {}", config.display())),
        "{err}"
    );
    assert!(stdout.contains("cli-which-config"), "{stdout}");
}

#[test]
fn without_a_config_host_commands_name_the_host_file_or_the_defaults() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth_command()
        .args(["config"])
        .env_remove("BERTH_CONFIG")
        .current_dir(dir.path())
        .output()
        .unwrap();
    let (_, err) = text(&out);
    let line = err.lines().next().unwrap_or_default();
    if std::path::Path::new("/etc/berth/berth.yaml").exists() {
        assert_eq!(line, "berth: config /etc/berth/berth.yaml");
    } else {
        assert!(
            line.starts_with("berth: no config file (/etc/berth/berth.yaml does not exist"),
            "{err}"
        );
        assert!(line.contains("./manifests"), "{line}");
    }
}

#[test]
fn berth_config_shows_each_value_and_where_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "namespace: fromfile\nparallelism: 3\nsource:\n  git:\n    url: https://example.com/x.git\n    ref: main\n    token_file: /etc/berth/token\n",
    )
    .unwrap();
    // A token file that exists and holds a secret: its content must not show.
    let token = dir.path().join("token");
    std::fs::write(&token, "s3cr3t-token-value\n").unwrap();
    let out = berth_command()
        .args([
            "config",
            "--config",
            config.to_str().unwrap(),
            "--parallelism",
            "6",
        ])
        .args(["--meta", "role=gateway", "--meta", "site=berlin"])
        .arg(format!("--source-git-token-file={}", token.display()))
        .env("BERTH_RESYNC", "30s")
        .output()
        .unwrap();
    let (stdout, err) = text(&out);
    assert!(out.status.success(), "{err}");
    let row = |key: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no row {key}:\n{stdout}"))
            .split_whitespace()
            .skip(1)
            .map(String::from)
            .collect()
    };
    assert_eq!(row("parallelism"), ["6", "flag", "--parallelism"]);
    assert_eq!(row("resync"), ["30s", "env", "BERTH_RESYNC"]);
    assert_eq!(
        row("namespace"),
        ["fromfile", "file", config.to_str().unwrap()]
    );
    assert_eq!(row("meta"), ["role=gateway,site=berlin", "flag", "--meta"]);
    assert_eq!(row("listen"), ["127.0.0.1:9797", "default"]);
    assert_eq!(row("source.git.token_file")[0], token.to_str().unwrap());
    assert!(
        !stdout.contains("s3cr3t") && !err.contains("s3cr3t"),
        "{stdout}{err}"
    );
}

/// A cause printed in an error's message and also returned as its source is
/// said twice in a chain (`berth: {e:#}`). thiserror makes a field named
/// `source`, or one marked `#[source]`/`#[from]`, the source: no message may
/// embed it.
#[test]
fn no_error_type_says_its_cause_twice() {
    fn files(dir: &std::path::Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    files(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src"),
        &mut paths,
    );
    let mut found = Vec::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let Some(attr) = line.trim_start().strip_prefix("#[error(") else {
                continue;
            };
            // The variant: up to the next attribute of the enum or its end.
            let variant: Vec<&str> = lines[i + 1..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with("#[error") && l.trim() != "}")
                .copied()
                .collect();
            let variant = variant.join("\n");
            let twice = attr.contains("{source}")
                || (attr.contains("{0}")
                    && (variant.contains("#[from]") || variant.contains("#[source]")))
                || (attr.contains('{')
                    && variant
                        .lines()
                        .any(|l| l.trim_start().starts_with("source:")));
            if twice && !attr.contains("transparent") {
                found.push(format!("{}:{}: {}", path.display(), i + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "messages that embed their source:\n{}",
        found.join("\n")
    );
}

#[test]
fn a_taken_listen_address_is_said_once() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let dir = tempfile::tempdir().unwrap();
    let out = run_berth(
        &[
            "run",
            "--manifests",
            dir.path().to_str().unwrap(),
            "--namespace",
            "cli-taken-listen",
            "--listen",
            &addr,
        ],
        Duration::from_secs(30),
    );
    let (_, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&format!("cannot listen on {addr}")), "{err}");
    assert_eq!(err.matches("in use").count(), 1, "{err}");
}

#[test]
fn the_man_page_and_completions_come_from_the_same_flags() {
    let out = run_berth(&["manpage"], Duration::from_secs(10));
    let (man, err) = text(&out);
    assert!(out.status.success(), "{err}");
    assert!(man.contains(".TH berth 1"), "{man}");
    for sub in ["run", "plan", "status", "down", "config"] {
        assert!(man.contains(&format!("berth\\-{sub}(1)")), "{sub}: {man}");
    }
    let out = run_berth(&["completions", "bash"], Duration::from_secs(10));
    let (script, _) = text(&out);
    assert!(out.status.success());
    assert!(
        script.contains("--docker-privileged"),
        "completions know the agent flags"
    );
}

/// `berth manpage --dir DIR` writes the top page and one per subcommand,
/// each with the subcommand's own flags.
#[test]
fn every_subcommand_has_its_own_man_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = run_berth(
        &["manpage", "--dir", dir.path().to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert!(out.status.success(), "{:?}", text(&out));
    let page = |name: &str| {
        std::fs::read_to_string(dir.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    assert!(page("berth.1").contains(".TH berth 1"));
    for sub in [
        "run",
        "validate",
        "plan",
        "status",
        "down",
        "retry",
        "config",
        "schema",
        "manpage",
        "completions",
    ] {
        let shown = page(&format!("berth-{sub}.1"));
        assert!(
            shown.contains(&format!(".TH berth-{sub} 1")),
            "{sub}: {shown}"
        );
    }
    assert!(page("berth-run.1").contains("\\-\\-once"));
    assert!(page("berth-down.1").contains("\\-\\-dry\\-run"));
}

/// A reader that closes the pipe early (`berth manpage | head -1`) gets
/// neither a panic nor a "Broken pipe" error, and berth exits 0.
#[test]
fn printing_commands_exit_quietly_when_the_reader_goes_away() {
    for args in [
        &["manpage"][..],
        &["completions", "bash"],
        &["completions", "zsh"],
        &["schema"],
    ] {
        let logs = tempfile::NamedTempFile::new().unwrap();
        let mut child = common::berth_command()
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(logs.reopen().unwrap())
            .spawn()
            .unwrap();
        // The read end closes before berth has parsed its arguments: its
        // first write finds no reader.
        drop(child.stdout.take());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                panic!("{args:?} still runs after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let err = std::fs::read_to_string(logs.path()).unwrap();
        assert_eq!(status.code(), Some(0), "{args:?}: {err}");
        assert_eq!(err, "", "{args:?}");
    }
}

/// The schema and README say: `args` without `command` go to the image's
/// ENTRYPOINT, replacing its CMD. The fixture image's ENTRYPOINT is
/// `/fixture`; `args: [sleep]` must run `/fixture sleep`.
#[test]
fn args_without_command_go_to_the_image_entrypoint_as_documented() {
    let schema = run_berth(&["schema"], Duration::from_secs(10));
    let (schema, _) = text(&schema);
    assert!(
        schema.contains("passed to the image's ENTRYPOINT"),
        "{schema}"
    );
    assert!(!schema.contains("ignored without"), "{schema}");

    let ns = common::TestNamespace::new("args-entrypoint");
    let dir = tempfile::tempdir().unwrap();
    common::write(
        dir.path(),
        "task.yaml",
        &format!(
            "name: app\nimage: {}\npull: never\nargs: [\"sleep\"]\n",
            common::fixture_image()
        ),
    );
    let out = common::run_once(dir.path(), &ns.ns, Duration::from_secs(90));
    let (_, err) = text(&out);
    assert!(out.status.success(), "{err}");
    let c = common::docker::inspect(&ns.container_name("app", 0)).expect("the container exists");
    assert_eq!(c["Config"]["Entrypoint"], serde_json::json!(["/fixture"]));
    assert_eq!(c["Config"]["Cmd"], serde_json::json!(["sleep"]));
    assert_eq!(c["State"]["Running"], serde_json::json!(true), "{c:#}");
}

/// One run of `berth validate` shows every problem of a file, each at its
/// own line and column, in order: unknown keys (named by position, with the
/// closest key berth knows), values of the wrong kind, and the rules.
#[test]
fn validate_reports_every_error_of_a_file_in_order() {
    let dir = tempfile::tempdir().unwrap();
    common::write(
        dir.path(),
        "web.yaml",
        "image: nginx\nenvv: {A: b}\nrestart:\n  delay: 10\ncount: many\nports:\n  http: {statik: 80}\n",
    );
    common::write(
        dir.path(),
        "job.yaml",
        "name: Job_1\nimage: busybox\nkind: job\ncount: 2\n",
    );
    let out = run_berth(
        &["validate", dir.path().to_str().unwrap()],
        Duration::from_secs(10),
    );
    let (shown, err) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{shown}{err}");
    let at = |file: &str| {
        shown
            .lines()
            .filter(|l| l.contains(&format!("{file}:")))
            .map(|l| {
                l.split_once(": ")
                    .map(|(place, _)| place.rsplit('/').next().unwrap().to_string())
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        at("web.yaml"),
        [
            "web.yaml:2:1",
            "web.yaml:4:10",
            "web.yaml:5:8",
            "web.yaml:7:10"
        ],
        "{shown}"
    );
    assert!(
        shown.contains("web.yaml:2:1: unknown key (did you mean `env`?)"),
        "{shown}"
    );
    assert!(
        shown.contains("web.yaml:4:10: `restart.delay`: expected a duration"),
        "{shown}"
    );
    assert!(
        shown.contains("web.yaml:5:8: `count`: expected a whole number"),
        "{shown}"
    );
    assert!(
        shown.contains("web.yaml:7:10: `ports.http`: unknown key (did you mean `static`?)"),
        "{shown}"
    );
    assert!(
        !shown.contains("envv") && !shown.contains("statik") && !shown.contains("many"),
        "{shown}"
    );
    assert_eq!(at("job.yaml").len(), 2, "{shown}");
}

/// Inside a container berth runs, `BERTH_NAMESPACE` is the parent's: `run`
/// and `down` refuse it from the environment (before touching Docker) and
/// ask for the namespace by flag or config file.
#[test]
fn run_and_down_inside_a_task_refuse_the_parents_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let env = [("BERTH_NAMESPACE", "parent"), ("BERTH_TASK", "web")];
    let folder = dir.path().to_str().unwrap();
    for args in [
        &["run", "--once", "--manifests", folder][..],
        &["down", "--dry-run"],
    ] {
        let out = common::run_berth_env(args, &env, Duration::from_secs(10));
        let (_, err) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("this berth would act on its parent's containers"),
            "{args:?}: {err}"
        );
        assert!(err.contains("--namespace"), "{err}");
    }
}
