//! berth's log output: level, format, colour and timestamps, and a cap on
//! what the HTTP and Docker client libraries may log.
//!
//! Warning: the Docker client logs whole request and response bodies at
//! debug and trace, and a create body holds secret env values. The cap is a
//! filter on the output layer, by target, applied after the user's filter:
//! no `RUST_LOG` (`trace`, `[pass]=debug`, `bollard=trace`) can lift it.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::filter::{EnvFilter, FilterExt, Targets};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// Log lines as text for people or JSON for machines.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Human,
    Json,
}

/// The level below which nothing is logged, unless `RUST_LOG` says more.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    fn directive(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

/// Libraries that log request or response content below these levels,
/// and the most each may log. Prefixes: `hyper` covers `hyper_util` too.
pub const CAPPED_TARGETS: &[(&str, LevelFilter)] = &[
    ("bollard", LevelFilter::INFO),
    ("hyper", LevelFilter::WARN),
    ("h2", LevelFilter::WARN),
    ("http", LevelFilter::WARN),
    ("rustls", LevelFilter::INFO),
    ("tokio_util", LevelFilter::INFO),
    ("tower", LevelFilter::INFO),
    ("axum", LevelFilter::INFO),
];

/// The cap: everything passes except the [`CAPPED_TARGETS`] above their level.
pub fn library_cap() -> Targets {
    Targets::new()
        .with_default(LevelFilter::TRACE)
        .with_targets(CAPPED_TARGETS.iter().copied())
}

/// What the environment says about the output, read once at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// ANSI colours: only on a terminal, and never with `NO_COLOR` set.
    pub ansi: bool,
    /// Timestamps: not when stderr goes to the journal, which adds its own.
    pub timestamps: bool,
}

impl Output {
    /// From the process's environment and stderr.
    pub fn detect() -> Output {
        let stderr = std::io::stderr();
        let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
        let journal = std::env::var("JOURNAL_STREAM")
            .ok()
            .is_some_and(|v| is_journal_stream(&v, stderr_identity()));
        Output {
            ansi: stderr.is_terminal() && !no_color,
            timestamps: !journal,
        }
    }
}

/// stderr's (device, inode), to compare with `JOURNAL_STREAM`.
fn stderr_identity() -> Option<(u64, u64)> {
    use std::os::fd::AsFd;
    let stat = rustix::fs::fstat(std::io::stderr().as_fd()).ok()?;
    Some((stat.st_dev, stat.st_ino))
}

/// systemd sets `JOURNAL_STREAM=<device>:<inode>` for a service whose stderr
/// is the journal. A child whose stderr was redirected elsewhere inherits
/// the variable, so it counts only when it names stderr itself (or when
/// stderr cannot be examined). Pure.
pub fn is_journal_stream(value: &str, stderr: Option<(u64, u64)>) -> bool {
    let Some((dev, ino)) = value.trim().split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    stderr.is_none_or(|s| s == (dev, ino))
}

/// The user's filter: `level` for everything, then `RUST_LOG`'s directives,
/// which win where they say something (`RUST_LOG=berth=debug` narrows one
/// target; `RUST_LOG=warn` overrides the level). Bad directives are
/// reported, not fatal.
pub fn user_filter(level: LogLevel, rust_log: Option<&str>) -> (EnvFilter, Vec<String>) {
    let mut text = level.directive().to_string();
    let mut bad = Vec::new();
    for directive in rust_log.unwrap_or_default().split(',') {
        let directive = directive.trim();
        if directive.is_empty() {
            continue;
        }
        if directive
            .parse::<tracing_subscriber::filter::Directive>()
            .is_ok()
        {
            text.push(',');
            text.push_str(directive);
        } else {
            bad.push(directive.to_string());
        }
    }
    let filter = EnvFilter::builder()
        .with_default_directive(LevelFilter::INFO.into())
        .parse_lossy(text);
    (filter, bad)
}

/// Install the process's logger, writing to stderr.
pub fn init(format: LogFormat, level: LogLevel) {
    init_with_writer(format, level, BoxMakeWriter::new(std::io::stderr));
}

/// Install the process's logger, writing to `writer` (stderr, or stderr
/// above the pull progress bars).
pub fn init_with_writer(format: LogFormat, level: LogLevel, writer: BoxMakeWriter) {
    let rust_log = std::env::var("RUST_LOG").ok();
    let (filter, bad) = user_filter(level, rust_log.as_deref());
    let output = Output::detect();
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(writer)
        .with_ansi(output.ansi);
    let layer = match (format, output.timestamps) {
        (LogFormat::Human, true) => fmt.boxed(),
        (LogFormat::Human, false) => fmt.without_time().boxed(),
        (LogFormat::Json, true) => fmt.json().flatten_event(true).boxed(),
        (LogFormat::Json, false) => fmt.json().flatten_event(true).without_time().boxed(),
    };
    tracing_subscriber::registry()
        .with(layer.with_filter(filter.and(library_cap())))
        .init();
    for directive in bad {
        tracing::warn!("RUST_LOG: ignoring {directive:?}, which is not a log directive");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::Filter;

    #[test]
    fn the_cap_holds_library_targets_whatever_the_user_filter_allows() {
        let cap = library_cap();
        assert!(cap.would_enable("bollard::docker", &tracing::Level::INFO));
        assert!(!cap.would_enable("bollard::docker", &tracing::Level::DEBUG));
        assert!(!cap.would_enable("bollard", &tracing::Level::TRACE));
        assert!(!cap.would_enable("hyper_util::client", &tracing::Level::INFO));
        assert!(!cap.would_enable("h2::codec", &tracing::Level::DEBUG));
        assert!(cap.would_enable("berth::engine", &tracing::Level::TRACE));
        // The user's filter is separate: a permissive one does not widen the cap.
        let (user, bad) = user_filter(LogLevel::Info, Some("trace,[pass]=debug"));
        assert!(bad.is_empty());
        let both = user.and(library_cap());
        let _: &dyn Filter<tracing_subscriber::Registry> = &both;
    }

    #[test]
    fn rust_log_wins_over_the_level_and_bad_directives_are_named() {
        let (f, bad) = user_filter(LogLevel::Debug, Some("warn,berth=trace,==x"));
        assert_eq!(bad, vec!["==x".to_string()]);
        let text = f.to_string();
        assert!(text.contains("berth=trace"), "{text}");
        assert_eq!(
            f.max_level_hint(),
            Some(LevelFilter::TRACE),
            "berth=trace is the most"
        );
        let (f, _) = user_filter(LogLevel::Warn, None);
        assert_eq!(f.max_level_hint(), Some(LevelFilter::WARN));
        let (f, _) = user_filter(LogLevel::Error, Some("info"));
        assert_eq!(f.max_level_hint(), Some(LevelFilter::INFO), "RUST_LOG wins");
    }

    #[test]
    fn journal_stream_counts_only_when_it_names_stderr() {
        assert!(is_journal_stream("8:1234", Some((8, 1234))));
        assert!(!is_journal_stream("8:1234", Some((8, 99))));
        assert!(is_journal_stream("8:1234", None));
        assert!(!is_journal_stream("", None));
        assert!(!is_journal_stream("junk", None));
    }
}
