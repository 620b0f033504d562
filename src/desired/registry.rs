//! Which credentials a pull uses: the task's own `auth`, else the agent's
//! `docker.auth_config` (a Docker `config.json`), matched by the registry
//! host of the image reference.
//!
//! Warning: everything here handles passwords. Errors name files and hosts,
//! never values; [`RegistryCredentials`]'s `Debug` redacts the password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Credentials for one pull. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct RegistryCredentials {
    pub username: Option<String>,
    pub password: Option<String>,
    pub email: Option<String>,
    pub server_address: Option<String>,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "(secret)"))
            .field("server_address", &self.server_address)
            .finish()
    }
}

/// The host Docker Hub images belong to, in berth's normal form.
pub const DOCKER_HUB: &str = "docker.io";

/// The registry host of an image reference: the first path component when it
/// looks like a host (has a `.` or a `:`, or is `localhost`), else Docker Hub.
/// `127.0.0.1:5000/app:1` → `127.0.0.1:5000`; `nginx:1.27` → `docker.io`.
pub fn registry_host(image: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    match name.split_once('/') {
        Some((first, _)) if first.contains('.') || first.contains(':') || first == "localhost" => {
            normalize_host(first)
        }
        _ => DOCKER_HUB.to_string(),
    }
}

/// A registry key as people write it (`https://index.docker.io/v1/`,
/// `http://reg:5000`, `Reg.Example.com`) → a bare, lower-case host, with
/// Docker Hub's aliases folded into [`DOCKER_HUB`].
pub fn normalize_host(key: &str) -> String {
    let key = key.trim();
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key).to_ascii_lowercase();
    match host.as_str() {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        _ => host,
    }
}

/// Why the agent's `docker.auth_config` could not be used. Never holds a
/// credential: only the path and what was wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthConfigError {
    #[error("docker.auth_config {path}: cannot read: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("docker.auth_config {path}: not a Docker config.json: {reason}")]
    Parse { path: PathBuf, reason: String },
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    email: Option<String>,
}

/// Registry credentials from a Docker `config.json` (`{"auths": {...}}`) or
/// a legacy `.dockercfg` (the same map at the top level), keyed by
/// normalised host. Credential helpers (`credsStore`) are not consulted.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct AuthConfig {
    by_host: BTreeMap<String, RegistryCredentials>,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("hosts", &self.by_host.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl AuthConfig {
    pub fn load(path: &Path) -> Result<AuthConfig, AuthConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthConfigError::Read {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        AuthConfig::parse(&text).map_err(|reason| AuthConfigError::Parse {
            path: path.to_path_buf(),
            reason,
        })
    }

    /// Parse the file's text. The error is a description without any of the
    /// file's content (serde_json reports only positions).
    pub fn parse(text: &str) -> Result<AuthConfig, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let map = match value.get("auths") {
            Some(auths) => auths.clone(),
            None => value,
        };
        let serde_json::Value::Object(entries) = map else {
            return Err("expected a JSON object with an `auths` map".into());
        };
        let mut by_host = BTreeMap::new();
        for (key, entry) in entries {
            // Other top-level keys of config.json (credsStore, HttpHeaders,
            // ...) are not registry entries when `auths` is absent.
            let Ok(entry) = serde_json::from_value::<AuthEntry>(entry) else {
                continue;
            };
            let (mut username, mut password) = (entry.username, entry.password);
            if let Some(auth) = entry.auth.filter(|a| !a.is_empty()) {
                let decoded = decode_base64(&auth)
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| {
                        format!("the `auth` of registry {key} is not base64 of user:password")
                    })?;
                let (user, pass) = decoded.split_once(':').ok_or_else(|| {
                    format!("the `auth` of registry {key} is not base64 of user:password")
                })?;
                username = Some(user.to_string());
                password = Some(pass.to_string());
            }
            if username.is_none() && password.is_none() {
                continue;
            }
            by_host.insert(
                normalize_host(&key),
                RegistryCredentials {
                    username,
                    password,
                    email: entry.email,
                    server_address: Some(key),
                },
            );
        }
        Ok(AuthConfig { by_host })
    }

    /// The credentials for the registry an image is pulled from, if any.
    pub fn for_image(&self, image: &str) -> Option<&RegistryCredentials> {
        self.by_host.get(&registry_host(image))
    }

    pub fn is_empty(&self) -> bool {
        self.by_host.is_empty()
    }
}

/// The credentials one pull uses: the task's `auth` wins (with its server
/// address defaulting to the image's registry host); else the agent's
/// `auth_config` entry for that host; else none (anonymous pull).
pub fn choose_credentials(
    image: &str,
    task_auth: Option<RegistryCredentials>,
    agent: Option<&AuthConfig>,
) -> Option<RegistryCredentials> {
    match task_auth {
        Some(mut creds) => {
            if creds.server_address.is_none() {
                creds.server_address = Some(registry_host(image));
            }
            Some(creds)
        }
        None => agent.and_then(|a| a.for_image(image)).cloned(),
    }
}

/// Standard base64 (with or without padding). `None` for anything else.
fn decode_base64(text: &str) -> Option<Vec<u8>> {
    fn value(c: u8) -> Option<u32> {
        match c {
            b'A'..=b'Z' => Some(u32::from(c - b'A')),
            b'a'..=b'z' => Some(u32::from(c - b'a') + 26),
            b'0'..=b'9' => Some(u32::from(c - b'0') + 52),
            b'+' => Some(62),
            b'/' => Some(63),
            _ => None,
        }
    }
    let bytes: Vec<u8> = text
        .trim()
        .trim_end_matches('=')
        .bytes()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    if bytes.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut acc = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            acc |= value(c)? << (18 - 6 * i);
        }
        let n = chunk.len() - 1;
        for i in 0..n {
            out.push((acc >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_host_comes_from_the_first_component_only_when_it_looks_like_a_host() {
        assert_eq!(registry_host("nginx"), "docker.io");
        assert_eq!(registry_host("nginx:1.27"), "docker.io");
        assert_eq!(registry_host("library/nginx:1.27"), "docker.io");
        assert_eq!(registry_host("docker.io/library/nginx"), "docker.io");
        assert_eq!(registry_host("index.docker.io/secret/service"), "docker.io");
        assert_eq!(registry_host("127.0.0.1:5000/app:1"), "127.0.0.1:5000");
        assert_eq!(registry_host("localhost/app"), "localhost");
        assert_eq!(registry_host("Quay.IO/org/app@sha256:abc"), "quay.io");
        assert_eq!(registry_host("reg:5000/a/b/c:tag"), "reg:5000");
    }

    #[test]
    fn registry_keys_are_normalised_like_image_hosts() {
        assert_eq!(normalize_host("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize_host("http://127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(normalize_host("127.0.0.1:5000/v2/"), "127.0.0.1:5000");
        assert_eq!(normalize_host("registry-1.docker.io"), "docker.io");
    }

    #[test]
    fn base64_auth_and_plain_username_password_entries_are_both_read() {
        // "deploy:s3cr:et" and a second entry in plain fields.
        let text = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "ZGVwbG95OnMzY3I6ZXQ="},
            "127.0.0.1:5000": {"username": "u", "password": "p", "email": "e@x"},
            "empty.example.com": {}
        }, "credsStore": "desktop"}"#;
        let config = AuthConfig::parse(text).unwrap();
        let hub = config.for_image("secret/service:1").unwrap();
        assert_eq!(hub.username.as_deref(), Some("deploy"));
        assert_eq!(hub.password.as_deref(), Some("s3cr:et"));
        let local = config.for_image("127.0.0.1:5000/app:1").unwrap();
        assert_eq!(local.username.as_deref(), Some("u"));
        assert_eq!(local.email.as_deref(), Some("e@x"));
        assert!(config.for_image("empty.example.com/app").is_none());
        assert!(config.for_image("quay.io/app").is_none());
    }

    #[test]
    fn a_legacy_dockercfg_without_auths_is_read_too() {
        let config = AuthConfig::parse(r#"{"quay.io": {"auth": "YTpi", "email": ""}}"#).unwrap();
        let c = config.for_image("quay.io/org/app").unwrap();
        assert_eq!(
            (c.username.as_deref(), c.password.as_deref()),
            (Some("a"), Some("b"))
        );
    }

    #[test]
    fn a_broken_file_is_an_error_that_shows_no_secret() {
        let err = AuthConfig::parse(r#"{"auths": {"r.io": {"auth": "not base64 hunter2!"}}}"#)
            .unwrap_err();
        assert!(err.contains("r.io"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
        assert!(AuthConfig::parse("[1, 2]").is_err());
        assert!(AuthConfig::parse("{").is_err());
    }

    #[test]
    fn debug_output_never_shows_a_password() {
        let config =
            AuthConfig::parse(r#"{"auths": {"r.io": {"auth": "dXNlcjpodW50ZXIy"}}}"#).unwrap();
        let text = format!("{config:?} {:?}", config.for_image("r.io/a"));
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn the_task_auth_wins_over_the_agent_file_and_gets_the_image_host() {
        let agent = AuthConfig::parse(r#"{"auths": {"r.io": {"auth": "YTpi"}}}"#).unwrap();
        let task = RegistryCredentials {
            username: Some("task".into()),
            password: Some("pw".into()),
            ..Default::default()
        };
        let chosen = choose_credentials("r.io/app:1", Some(task), Some(&agent)).unwrap();
        assert_eq!(chosen.username.as_deref(), Some("task"));
        assert_eq!(chosen.server_address.as_deref(), Some("r.io"));
        let chosen = choose_credentials("r.io/app:1", None, Some(&agent)).unwrap();
        assert_eq!(chosen.username.as_deref(), Some("a"));
        assert!(choose_credentials("other.io/app", None, Some(&agent)).is_none());
        assert!(choose_credentials("r.io/app", None, None).is_none());
    }

    #[test]
    fn base64_decoding_matches_known_values() {
        assert_eq!(decode_base64("aGVsbG8=").unwrap(), b"hello");
        assert_eq!(decode_base64("aGVsbG8").unwrap(), b"hello");
        assert_eq!(decode_base64("").unwrap(), b"");
        assert!(decode_base64("a").is_none());
        assert!(decode_base64("a*bc").is_none());
    }
}
