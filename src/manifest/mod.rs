//! Task manifests: the YAML a person writes, its parsing with precise
//! locations, and the rules a manifest must follow.

pub mod duration;
pub mod types;

pub use types::*;

/// Task and namespace names: `[a-z0-9]([a-z0-9-]*[a-z0-9])?`, at most 48 chars.
/// They become part of container names, so they must be safe there.
pub fn is_valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 48
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}
