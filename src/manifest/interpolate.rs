//! `${...}` interpolation in manifest strings. Pure: the caller supplies the
//! lookup, so validation (which only knows names) and resolution (which
//! knows values) share one grammar.
//!
//! `${NAME}` is replaced, `$${` is a literal `${`, any other `$` is left
//! alone (so shell snippets like `$HOME` pass through). An unknown name is an
//! error, never an empty string: a silently empty value is how a container
//! ends up listening on the wrong port.

/// A `${...}` reference found in a string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    pub name: String,
    /// Byte offset of the `$` of `${` in the input.
    pub offset: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InterpolateError {
    #[error("unknown name `${{{name}}}`")]
    Unknown { name: String, offset: usize },
    #[error("`${{` without a closing `}}` (write `$${{` for a literal `${{`)")]
    Unterminated { offset: usize },
    #[error("`${{{name}}}` is not a valid reference: names use letters, digits, `_`, `.` and `-`")]
    InvalidName { name: String, offset: usize },
}

impl InterpolateError {
    /// Byte offset of the offending `${` in the input.
    pub fn offset(&self) -> usize {
        match self {
            InterpolateError::Unknown { offset, .. }
            | InterpolateError::Unterminated { offset }
            | InterpolateError::InvalidName { offset, .. } => *offset,
        }
    }
}

/// One piece of a scanned string.
enum Piece<'a> {
    Text(&'a str),
    Ref(&'a str, usize),
}

/// Split `input` into literal text and references, following the grammar
/// in the module doc. Stops at the first malformed reference.
fn pieces(input: &str) -> Result<Vec<Piece<'_>>, InterpolateError> {
    let mut out = Vec::new();
    let mut rest = input;
    let mut consumed = 0;
    while let Some(at) = rest.find('$') {
        let after = &rest[at..];
        if let Some(escaped) = after.strip_prefix("$${") {
            out.push(Piece::Text(&rest[..at]));
            out.push(Piece::Text("${"));
            rest = escaped;
            consumed += at + 3;
        } else if let Some(body) = after.strip_prefix("${") {
            out.push(Piece::Text(&rest[..at]));
            let offset = consumed + at;
            let end = body
                .find('}')
                .ok_or(InterpolateError::Unterminated { offset })?;
            let name = &body[..end];
            let valid = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !valid {
                return Err(InterpolateError::InvalidName {
                    name: name.to_string(),
                    offset,
                });
            }
            out.push(Piece::Ref(name, offset));
            rest = &body[end + 1..];
            consumed += at + 2 + end + 1;
        } else {
            out.push(Piece::Text(&rest[..=at]));
            rest = &rest[at + 1..];
            consumed += at + 1;
        }
    }
    out.push(Piece::Text(rest));
    Ok(out)
}

/// Replace every `${NAME}` with `lookup(NAME)`; an unknown name is an error.
pub fn interpolate(
    input: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, InterpolateError> {
    let mut out = String::with_capacity(input.len());
    for piece in pieces(input)? {
        match piece {
            Piece::Text(text) => out.push_str(text),
            Piece::Ref(name, offset) => match lookup(name) {
                Some(value) => out.push_str(&value),
                None => {
                    return Err(InterpolateError::Unknown {
                        name: name.to_string(),
                        offset,
                    })
                }
            },
        }
    }
    Ok(out)
}

/// Every reference in `input`, with its offset; the first malformed one is an error.
pub fn scan(input: &str) -> Result<Vec<Reference>, InterpolateError> {
    Ok(pieces(input)?
        .into_iter()
        .filter_map(|p| match p {
            Piece::Ref(name, offset) => Some(Reference {
                name: name.to_string(),
                offset,
            }),
            Piece::Text(_) => None,
        })
        .collect())
}

/// The names `input` refers to, in order (malformed references are skipped;
/// [`scan`] reports them).
pub fn references(input: &str) -> Vec<String> {
    scan(input)
        .unwrap_or_default()
        .into_iter()
        .map(|r| r.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        match name {
            "BERTH_PORT_http" => Some("8080".into()),
            "meta.site" => Some("berlin".into()),
            "node.hostname" => Some("edge1".into()),
            "node.ip" => Some("10.0.0.5".into()),
            "MODE" => Some("prod".into()),
            _ => None,
        }
    }

    #[test]
    fn replaces_berth_meta_node_and_env_references() {
        assert_eq!(
            interpolate(
                "--port=${BERTH_PORT_http} ${meta.site}/${node.hostname}@${node.ip} ${MODE}",
                lookup
            ),
            Ok("--port=8080 berlin/edge1@10.0.0.5 prod".to_string())
        );
    }

    #[test]
    fn an_unknown_name_is_an_error_naming_it_never_an_empty_string() {
        let err = interpolate("x=${NOPE}", lookup);
        assert_eq!(
            err,
            Err(InterpolateError::Unknown {
                name: "NOPE".into(),
                offset: 2
            })
        );
        assert!(err.unwrap_err().to_string().contains("${NOPE}"));
    }

    #[test]
    fn double_dollar_brace_escapes_a_literal_reference() {
        assert_eq!(
            interpolate("echo $${HOME} ${MODE}", lookup),
            Ok("echo ${HOME} prod".to_string())
        );
        assert_eq!(references("$${NOPE}"), Vec::<String>::new());
    }

    #[test]
    fn a_lone_dollar_is_left_alone() {
        assert_eq!(
            interpolate("cost $5 and $HOME and $", lookup),
            Ok("cost $5 and $HOME and $".to_string())
        );
    }

    #[test]
    fn an_unterminated_reference_is_an_error() {
        assert_eq!(
            interpolate("ab ${MODE", lookup),
            Err(InterpolateError::Unterminated { offset: 3 })
        );
    }

    #[test]
    fn an_empty_or_malformed_name_is_an_error() {
        assert!(matches!(
            interpolate("${}", lookup),
            Err(InterpolateError::InvalidName { .. })
        ));
        assert!(matches!(
            interpolate("${a b}", lookup),
            Err(InterpolateError::InvalidName { .. })
        ));
    }

    #[test]
    fn references_lists_names_with_byte_offsets() {
        assert_eq!(
            references("${A}-${meta.site}-$${B}-${C}"),
            vec!["A", "meta.site", "C"]
        );
        let found = scan("é ${A}").unwrap_or_default();
        assert_eq!(
            found,
            vec![Reference {
                name: "A".into(),
                offset: 3
            }]
        );
    }
}
