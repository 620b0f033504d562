//! Fleet selectors: `select:` lets one repository serve many hosts. A task
//! runs on an agent only when every entry matches; elsewhere it is "not
//! selected", which is neither an error nor a desired task.
//!
//! Pure functions of the manifest and the agent's facts, so the decision is
//! the same in `plan`, `status` and the loop.

use std::collections::BTreeMap;

/// The host's name, matched as a glob.
pub const HOSTNAME_KEY: &str = "node.hostname";
/// `meta.<key>`: the agent config's `meta`, matched exactly.
pub const META_PREFIX: &str = "meta.";

/// What a selector key may be, for error messages.
pub const ALLOWED_KEYS: &str =
    "`meta.<key>` (exact value of the agent's meta key) or `node.hostname` (a glob such as edge-*)";

/// Whether the task runs on this agent: every entry must match.
pub fn selects(
    select: &BTreeMap<String, String>,
    meta: &BTreeMap<String, String>,
    hostname: &str,
) -> bool {
    unmet(select, meta, hostname).is_none()
}

/// The first entry this agent does not satisfy, said for a person
/// (`meta.role is worker, not gateway`); `None` when the task is selected.
/// An unknown key never matches: a selector berth cannot read must not
/// run a task everywhere.
pub fn unmet(
    select: &BTreeMap<String, String>,
    meta: &BTreeMap<String, String>,
    hostname: &str,
) -> Option<String> {
    for (key, wanted) in select {
        if key == HOSTNAME_KEY {
            if !glob_match(&wanted.to_ascii_lowercase(), &hostname.to_ascii_lowercase()) {
                return Some(format!("node.hostname {hostname} does not match {wanted}"));
            }
        } else if let Some(meta_key) = key.strip_prefix(META_PREFIX) {
            match meta.get(meta_key) {
                Some(value) if value == wanted => {}
                Some(value) => return Some(format!("{key} is {value}, not {wanted}")),
                None => return Some(format!("{key} is not set on this agent (wanted {wanted})")),
            }
        } else {
            return Some(format!("unknown selector {key}"));
        }
    }
    None
}

/// Why a selector key is not accepted; `None` for a good key.
pub fn check_key(key: &str) -> Option<String> {
    if key == HOSTNAME_KEY {
        return None;
    }
    match key.strip_prefix(META_PREFIX) {
        Some(meta_key) if !meta_key.is_empty() => None,
        _ => Some(format!(
            "select key `{key}` is not known: use {ALLOWED_KEYS}"
        )),
    }
}

/// `*` is any run of characters, `?` one character; all else is literal.
/// Iterative with one backtrack point, so no pattern can take long.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((star_p, star_t)) = star {
            pi = star_p + 1;
            ti = star_t + 1;
            star = Some((star_p, star_t + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_selector_selects_every_agent() {
        assert!(selects(&map(&[]), &map(&[]), "anything"));
    }

    #[test]
    fn every_entry_must_match() {
        let select = map(&[("meta.role", "gateway"), ("node.hostname", "edge-*")]);
        let gateway = map(&[("role", "gateway"), ("site", "berlin")]);
        assert!(selects(&select, &gateway, "edge-07"));
        assert!(!selects(&select, &gateway, "core-01"));
        assert!(!selects(&select, &map(&[("role", "worker")]), "edge-07"));
        assert!(!selects(&select, &map(&[]), "edge-07"));
    }

    #[test]
    fn meta_values_match_exactly_and_hostnames_ignore_case() {
        let select = map(&[("meta.role", "gateway")]);
        assert!(!selects(&select, &map(&[("role", "Gateway")]), "h"));
        assert!(!selects(&select, &map(&[("role", "gateway2")]), "h"));
        assert!(selects(
            &map(&[("node.hostname", "EDGE-*")]),
            &map(&[]),
            "edge-1"
        ));
    }

    #[test]
    fn the_reason_names_the_entry_that_failed() {
        let select = map(&[("meta.role", "gateway")]);
        assert_eq!(
            unmet(&select, &map(&[("role", "worker")]), "h").as_deref(),
            Some("meta.role is worker, not gateway")
        );
        assert_eq!(
            unmet(&select, &map(&[]), "h").as_deref(),
            Some("meta.role is not set on this agent (wanted gateway)")
        );
        assert_eq!(
            unmet(&map(&[("node.hostname", "edge-*")]), &map(&[]), "core-1").as_deref(),
            Some("node.hostname core-1 does not match edge-*")
        );
    }

    #[test]
    fn an_unknown_key_never_selects() {
        assert!(!selects(&map(&[("node.ip", "10.0.0.1")]), &map(&[]), "h"));
        assert!(check_key("node.ip").is_some_and(|e| e.contains("meta.<key>")));
        assert!(check_key("meta.").is_some());
        assert!(check_key("meta.role").is_none());
        assert!(check_key("node.hostname").is_none());
    }

    #[test]
    fn globs_match_like_a_shell() {
        for (pattern, text, expected) in [
            ("edge-*", "edge-01", true),
            ("edge-*", "edge-", true),
            ("edge-*", "core-01", false),
            ("*", "", true),
            ("", "", true),
            ("", "a", false),
            ("edge-??", "edge-01", true),
            ("edge-??", "edge-1", false),
            ("*-gw-*", "berlin-gw-2", true),
            ("*-gw-*", "berlin-db-2", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("edge.lan", "edgexlan", false),
            ("**a", "bbba", true),
        ] {
            assert_eq!(glob_match(pattern, text), expected, "{pattern} vs {text}");
        }
    }

    #[test]
    fn a_pathological_glob_is_still_fast() {
        let pattern = "*a".repeat(50) + "b";
        let text = "a".repeat(5000);
        let started = std::time::Instant::now();
        assert!(!glob_match(&pattern, &text));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }
}
