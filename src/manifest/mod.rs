//! Task manifests: the YAML a person writes, its parsing with precise
//! locations, and the rules a manifest must follow.

pub mod cron;
pub mod duration;
pub mod files;
pub mod interpolate;
pub mod parse;
pub mod select;
pub mod shape;
pub mod types;
pub mod validate;

pub use parse::{parse_manifest_file, ManifestError, ParsedTask, Pos, Seg};
pub use types::*;
pub use validate::{check_file, check_file_on, validate, CheckedTask, ValidationContext};

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

/// The JSON Schema of a task manifest, for `berth schema` and editors.
pub fn manifest_schema() -> serde_json::Value {
    serde_json::to_value(schemars::schema_for!(TaskManifest)).unwrap_or(serde_json::Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schema_describes_every_manifest_field_and_accepts_numeric_env_values() {
        let schema = manifest_schema();
        let properties = &schema["properties"];
        for field in ["name", "image", "env", "ports", "restart", "healthcheck"] {
            assert!(properties.get(field).is_some(), "missing {field}");
        }
        assert_eq!(schema["required"], serde_json::json!(["image"]));
        let text = schema.to_string();
        assert!(text.contains("\"integer\",\"boolean\""), "{text}");
        assert_eq!(
            properties["select"]["propertyNames"]["pattern"],
            "^(meta\\..+|node\\.hostname)$"
        );
    }
}
