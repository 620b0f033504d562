//! Durations as people write them in manifests: `500ms`, `10s`, `5m`, `1h`,
//! or combined (`1m30s`). A bare number is refused: `10` could mean anything.

use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A non-negative duration parsed from a human string.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub std::time::Duration);

impl Duration {
    pub const fn from_secs(secs: u64) -> Self {
        Duration(std::time::Duration::from_secs(secs))
    }
    pub const fn from_millis(ms: u64) -> Self {
        Duration(std::time::Duration::from_millis(ms))
    }
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {why} (write e.g. 500ms, 10s, 5m, 1h or 1m30s)")]
pub struct ParseDurationError {
    input: String,
    why: &'static str,
}

impl FromStr for Duration {
    type Err = ParseDurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why| ParseDurationError {
            input: s.to_string(),
            why,
        };
        let text = s.trim();
        if text.is_empty() {
            return Err(err("it is empty"));
        }
        let mut total: u128 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err(err("a number must come before each unit"));
            }
            let number: u128 = rest[..digits]
                .parse()
                .map_err(|_| err("number too large"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let nanos_per_unit: u128 = match &rest[..unit_len] {
                "ns" => 1,
                "us" | "µs" => 1_000,
                "ms" => 1_000_000,
                "s" => 1_000_000_000,
                "m" => 60 * 1_000_000_000,
                "h" => 3_600 * 1_000_000_000,
                "" => return Err(err("a unit is missing")),
                _ => return Err(err("unknown unit")),
            };
            rest = &rest[unit_len..];
            total = number
                .checked_mul(nanos_per_unit)
                .and_then(|n| total.checked_add(n))
                .ok_or_else(|| err("too large"))?;
        }
        let total = u64::try_from(total).map_err(|_| err("too large"))?;
        Ok(Duration(std::time::Duration::from_nanos(total)))
    }
}

impl fmt::Display for Duration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.subsec_nanos() == 0 {
            let s = d.as_secs();
            if s != 0 && s % 3600 == 0 {
                write!(f, "{}h", s / 3600)
            } else if s != 0 && s % 60 == 0 {
                write!(f, "{}m", s / 60)
            } else {
                write!(f, "{s}s")
            }
        } else if d.subsec_nanos() % 1_000_000 == 0 {
            write!(f, "{}ms", d.as_millis())
        } else {
            write!(f, "{}ns", d.as_nanos())
        }
    }
}

impl Serialize for Duration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Duration {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([0-9]+(ns|us|µs|ms|s|m|h))+$",
            "description": "A duration such as 500ms, 10s, 5m, 1h or 1m30s."
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_unit_and_combinations() {
        let ms = |s: &str| s.parse::<Duration>().map(|d| d.0.as_millis());
        assert_eq!(ms("500ms"), Ok(500));
        assert_eq!(ms("10s"), Ok(10_000));
        assert_eq!(ms("5m"), Ok(300_000));
        assert_eq!(ms("1h"), Ok(3_600_000));
        assert_eq!(ms("1m30s"), Ok(90_000));
    }

    #[test]
    fn refuses_bare_numbers_unknown_units_and_empty_text() {
        for bad in ["10", "", "s", "10x", "1.5s", "-1s"] {
            assert!(
                bad.parse::<Duration>().is_err(),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn displays_in_the_largest_exact_unit() {
        assert_eq!(Duration::from_secs(300).to_string(), "5m");
        assert_eq!(Duration::from_millis(200).to_string(), "200ms");
        assert_eq!(Duration::from_secs(7200).to_string(), "2h");
        assert_eq!(Duration::from_secs(90).to_string(), "90s");
    }
}
