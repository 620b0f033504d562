//! The repository URL: which transports berth accepts, and the form that may
//! be shown (status, logs, errors) with any user name or query stripped.

use std::fmt;

/// How git reaches the repository; decides which credentials apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `ssh://` or scp-like `user@host:path`.
    Ssh,
    Https,
    /// `file:///abs/path`: a repository on this machine (tests, mirrors).
    File,
    /// `git://`: git daemon's read-only, unauthenticated protocol. Safe only
    /// with `verify`, since nothing authenticates the server.
    Git,
}

impl Transport {
    /// The name git's `protocol.<name>.allow` uses.
    pub fn protocol_name(self) -> &'static str {
        match self {
            Transport::Ssh => "ssh",
            Transport::Https => "https",
            Transport::File => "file",
            Transport::Git => "git",
        }
    }
}

/// A checked repository URL.
#[derive(Clone, PartialEq, Eq)]
pub struct GitUrl {
    raw: String,
    transport: Transport,
    redacted: String,
    username: Option<String>,
}

/// Never prints the raw URL, so a `{:?}` in a log cannot leak a user name.
impl fmt::Debug for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("GitUrl").field(&self.redacted).finish()
    }
}

impl fmt::Display for GitUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

impl GitUrl {
    /// Accept `ssh://`, `https://`, `file:///`, `git://` and scp-like
    /// `[user@]host:path`. Refused: a password in the URL (it would be on
    /// git's command line, visible in `ps`), local paths without `file://`,
    /// and anything git could read as an option or a helper (`ext::`).
    pub fn parse(url: &str) -> Result<GitUrl, String> {
        if url.is_empty() {
            return Err("is empty; write e.g. ssh://git@example.com/ops/edge.git".into());
        }
        if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err("contains whitespace or control characters".into());
        }
        if url.starts_with('-') {
            return Err("must not start with `-`".into());
        }
        if url.contains("::") {
            return Err("`transport::address` remote helpers are not supported; use ssh://, https://, file:// or git://".into());
        }
        match url.split_once("://") {
            Some((scheme, rest)) => parse_with_scheme(url, scheme, rest),
            None => parse_scp_like(url),
        }
    }

    /// What git is given.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The URL without user name, password, query or fragment: safe to show.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// The user name in the URL, if any (`git` in `ssh://git@host/x`).
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref()
    }
}

fn parse_with_scheme(url: &str, scheme: &str, rest: &str) -> Result<GitUrl, String> {
    let transport = match scheme.to_ascii_lowercase().as_str() {
        "ssh" => Transport::Ssh,
        "https" => Transport::Https,
        "file" => Transport::File,
        "git" => Transport::Git,
        "http" => {
            return Err(
                "http:// is refused: the repository and any token would travel in clear text; use https://"
                    .into(),
            )
        }
        _ => {
            return Err(format!(
                "scheme `{scheme}://` is not supported; use ssh://, https://, file:// or git://"
            ))
        }
    };
    if transport == Transport::File {
        if !rest.starts_with('/') || rest.len() < 2 {
            return Err("a file URL must name an absolute path: file:///srv/git/edge.git".into());
        }
        let redacted = format!("file://{}", strip_query(rest));
        return Ok(GitUrl {
            raw: url.to_string(),
            transport,
            redacted,
            username: None,
        });
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, host) = match authority.rsplit_once('@') {
        Some((userinfo, host)) => (Some(userinfo), host),
        None => (None, authority),
    };
    if host.is_empty() || host.starts_with(':') {
        return Err(format!("names no host; write {scheme}://HOST/PATH"));
    }
    if path.len() < 2 {
        return Err(format!(
            "names no repository path; write {scheme}://{host}/PATH"
        ));
    }
    let username = match userinfo {
        Some(info) if info.contains(':') => {
            return Err(
                "contains a password; berth would have to put it on git's command line, visible in `ps`: put a token in token_file instead"
                    .into(),
            )
        }
        Some("") => None,
        Some(user) => Some(user.to_string()),
        None => None,
    };
    Ok(GitUrl {
        raw: url.to_string(),
        transport,
        redacted: format!(
            "{}://{host}{}",
            scheme.to_ascii_lowercase(),
            strip_query(path)
        ),
        username,
    })
}

/// `[user@]host:path`, git's rule: a colon before any slash.
fn parse_scp_like(url: &str) -> Result<GitUrl, String> {
    let unsupported = || {
        format!(
            "`{}` is not a URL berth accepts: use ssh://, https://, file:// (for a local path: file:///srv/git/edge.git) or git://, or user@host:path",
            url.split('@').next_back().unwrap_or_default()
        )
    };
    let Some((before, path)) = url.split_once(':') else {
        return Err(unsupported());
    };
    if before.contains('/') || path.is_empty() {
        return Err(unsupported());
    }
    // `user:secret@host:path` reads to git as host `user`; refuse the
    // likely mistake rather than show the secret as part of a path.
    if path
        .split('/')
        .next()
        .is_some_and(|first| first.contains('@'))
    {
        return Err("contains a password; use ssh_key_file".into());
    }
    let (user, host) = match before.rsplit_once('@') {
        Some((user, host)) => (Some(user), host),
        None => (None, before),
    };
    if host.is_empty() || host.contains(':') {
        return Err(unsupported());
    }
    if user.is_some_and(|u| u.contains(':')) {
        return Err("contains a password; use ssh_key_file".into());
    }
    Ok(GitUrl {
        raw: url.to_string(),
        transport: Transport::Ssh,
        redacted: format!("{host}:{}", strip_query(path)),
        username: user.filter(|u| !u.is_empty()).map(str::to_string),
    })
}

fn strip_query(path: &str) -> &str {
    path.split(['?', '#']).next().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(url: &str) -> GitUrl {
        GitUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    fn err(url: &str) -> String {
        match GitUrl::parse(url) {
            Ok(u) => panic!("{url} was accepted as {u}"),
            Err(e) => e,
        }
    }

    #[test]
    fn every_supported_form_parses_with_its_transport() {
        assert_eq!(
            ok("ssh://git@example.com/ops/edge.git").transport(),
            Transport::Ssh
        );
        assert_eq!(
            ok("git@example.com:ops/edge.git").transport(),
            Transport::Ssh
        );
        assert_eq!(ok("example.com:edge.git").transport(), Transport::Ssh);
        assert_eq!(
            ok("https://example.com/ops/edge.git").transport(),
            Transport::Https
        );
        assert_eq!(ok("file:///srv/git/edge.git").transport(), Transport::File);
        assert_eq!(
            ok("git://127.0.0.1:9418/edge.git").transport(),
            Transport::Git
        );
    }

    #[test]
    fn the_shown_form_has_no_user_query_or_fragment() {
        let url = ok("https://deploy@example.com/ops/edge.git?private_token=abc#x");
        assert_eq!(url.redacted(), "https://example.com/ops/edge.git");
        assert_eq!(url.username(), Some("deploy"));
        assert_eq!(
            ok("ssh://git@example.com:2222/ops/edge.git").redacted(),
            "ssh://example.com:2222/ops/edge.git"
        );
        assert_eq!(
            ok("git@example.com:ops/edge.git").redacted(),
            "example.com:ops/edge.git"
        );
        assert!(!format!("{:?}", url).contains("deploy"));
    }

    #[test]
    fn a_password_in_the_url_is_refused_without_echoing_it() {
        for url in [
            "https://me:s3cret@example.com/x.git",
            "ssh://me:s3cret@example.com/x.git",
            "me:s3cret@example.com:x.git",
        ] {
            let e = err(url);
            assert!(e.contains("password"), "{url}: {e}");
            assert!(!e.contains("s3cret"), "{url}: {e}");
        }
    }

    #[test]
    fn other_schemes_local_paths_and_options_are_refused() {
        assert!(err("http://example.com/x.git").contains("https"));
        assert!(err("ext::sh -c touch% /tmp/pwned").contains("whitespace"));
        assert!(err("ext::true").contains("remote helpers"));
        assert!(err("/srv/git/edge.git").contains("file:///"));
        assert!(err("./edge.git").contains("file:///"));
        assert!(err("-uhelp").contains("`-`"));
        assert!(err("file://relative/x.git").contains("absolute"));
        assert!(err("ftp://example.com/x.git").contains("not supported"));
        assert!(err("https:///x.git").contains("no host"));
        assert!(err("https://example.com").contains("no repository path"));
        assert!(err("").contains("empty"));
    }
}
