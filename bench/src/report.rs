//! The table printed at the end and `BENCHMARKS.md`.

use std::fmt::Write as _;
use std::process::Command;

use crate::stats::{fmt_ms, Summary};

/// One line of the table.
pub struct Row {
    pub measure: String,
    pub subject: String,
    pub summary: Option<Summary>,
    /// Pre-formatted figure when the row is not a duration (calls, MB, %).
    pub figure: Option<String>,
    pub ratio: Option<String>,
}

impl Row {
    pub fn timed(measure: &str, subject: &str, summary: Option<Summary>) -> Row {
        Row {
            measure: measure.into(),
            subject: subject.into(),
            summary,
            figure: None,
            ratio: None,
        }
    }

    pub fn figure(measure: &str, subject: &str, figure: String) -> Row {
        Row {
            measure: measure.into(),
            subject: subject.into(),
            summary: None,
            figure: Some(figure),
            ratio: None,
        }
    }

    pub fn with_ratio(mut self, ratio: Option<f64>, of: &str) -> Row {
        self.ratio = ratio.map(|r| format!("{r:.2}× {of}"));
        self
    }

    fn cells(&self) -> [String; 5] {
        let (median, spread, n) = match (&self.summary, &self.figure) {
            (Some(s), _) => (
                fmt_ms(s.median),
                format!("{} – {}", fmt_ms(s.min), fmt_ms(s.max)),
                s.n.to_string(),
            ),
            (None, Some(f)) => (f.clone(), String::new(), String::new()),
            (None, None) => ("skipped".into(), String::new(), String::new()),
        };
        [
            format!("{} — {}", self.measure, self.subject),
            median,
            spread,
            n,
            self.ratio.clone().unwrap_or_default(),
        ]
    }
}

/// A target and how this run did against it.
pub struct Target {
    pub what: String,
    pub figure: String,
    /// `None`: not measured in this run.
    pub met: Option<bool>,
}

impl Target {
    pub fn new(what: &str, figure: String, met: Option<bool>) -> Target {
        Target {
            what: what.into(),
            figure,
            met,
        }
    }

    fn verdict(&self) -> &'static str {
        match self.met {
            Some(true) => "met",
            Some(false) => "MISSED",
            None => "not measured",
        }
    }
}

const HEADERS: [&str; 5] = ["measure — subject", "median", "min – max", "n", "ratio"];

/// The table as aligned plain text for the terminal.
pub fn text_table(rows: &[Row], targets: &[Target]) -> String {
    let cells: Vec<[String; 5]> = rows.iter().map(Row::cells).collect();
    let mut widths = HEADERS.map(|h| h.chars().count());
    for (row, cells) in rows.iter().zip(&cells) {
        // A free-text figure runs on past the columns instead of widening them.
        let columns = if row.figure.is_some() { 1 } else { cells.len() };
        for (w, c) in widths.iter_mut().zip(cells).take(columns) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cols: &[String]| {
        let mut s = String::new();
        for (i, c) in cols.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            s.push_str(c);
            s.push_str(&" ".repeat(pad + 2));
        }
        s.trim_end().to_string()
    };
    let mut out = String::new();
    let _ = writeln!(out, "{}", line(&HEADERS.map(String::from)));
    for row in &cells {
        let _ = writeln!(out, "{}", line(row));
    }
    let _ = writeln!(out, "\nTargets:");
    for t in targets {
        let _ = writeln!(out, "  [{}] {}: {}", t.verdict(), t.what, t.figure);
    }
    out
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The machine and software a run measured.
pub struct Machine {
    pub lines: Vec<(String, String)>,
}

impl Machine {
    pub fn detect(workspace: &std::path::Path) -> Machine {
        let ws = workspace.display();
        let mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo");
        let commit = sh(&format!(
            "cd '{ws}' && git rev-parse --short HEAD && (git diff --quiet HEAD -- src bench benches Cargo.toml || echo '(with uncommitted changes)')"
        ))
        .replace('\n', " ");
        let lines = vec![
            ("date (UTC)".into(), sh("date -u '+%Y-%m-%d %H:%M'")),
            ("cpus (nproc)".into(), sh("nproc")),
            (
                "cpu".into(),
                sh("awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo"),
            ),
            ("memory".into(), mem),
            ("kernel".into(), sh("uname -r")),
            (
                "docker".into(),
                sh("docker info --format '{{.ServerVersion}}, storage driver {{.Driver}}, cgroup v{{.CgroupVersion}}'"),
            ),
            ("docker-compose".into(), sh("docker-compose version --short 2>/dev/null")),
            ("berth commit".into(), commit),
        ];
        Machine { lines }
    }
}

/// `BENCHMARKS.md`.
pub fn markdown(
    rows: &[Row],
    targets: &[Target],
    machine: &Machine,
    settings: &str,
    notes: &[String],
) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "# berth benchmarks\n");
    let _ = writeln!(
        out,
        "Produced by `berth-bench` (`bench/`). Each figure is measured side by side with its \
         peer in the same run, several rounds interleaved, so machine noise hits all \
         subjects alike; read the ratios and the spread more than the absolute times.\n"
    );
    let _ = writeln!(
        out,
        "Rerun (needs Docker and, for the compose column, `apt-get install -y docker-compose`):\n"
    );
    let _ = writeln!(
        out,
        "```sh\ncargo run --release -p berth-bench -- --out BENCHMARKS.md\n```\n"
    );
    let _ = writeln!(
        out,
        "`--quick` for a short smoke run (10 tasks, 1 round, 50 scale tasks); `--rounds N`, \
         `--tasks N`, `--scale-tasks N`, `--scale-rounds N` to change the size; `--only {}` runs some of the \
         scenarios (a file written from such a run holds only their rows); `--no-compose` \
         leaves docker-compose out. Planner detail: \
         `cargo bench --bench plan` (criterion).\n",
        crate::SCENARIOS.join(",")
    );
    let _ = writeln!(out, "## Machine\n");
    for (k, v) in &machine.lines {
        let _ = writeln!(out, "- {k}: {v}");
    }
    let _ = writeln!(out, "- run: {settings}\n");
    let _ = writeln!(out, "## Results\n");
    let _ = writeln!(out, "| {} |", HEADERS.join(" | "));
    let _ = writeln!(out, "|{}", " --- |".repeat(HEADERS.len()));
    for row in rows {
        let _ = writeln!(out, "| {} |", row.cells().join(" | "));
    }
    let _ = writeln!(out, "\n## Targets\n");
    let _ = writeln!(out, "| target | figure | verdict |\n| --- | --- | --- |");
    for t in targets {
        let _ = writeln!(out, "| {} | {} | {} |", t.what, t.figure, t.verdict());
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\n## How each figure is taken\n");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    out
}
