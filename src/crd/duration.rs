//! A Go-style duration string (`90s`, `2m`, `1h30m`) as Kubernetes APIs spell them
//! (`metav1.Duration`). Kept as the user's own string so status and `kubectl get -o yaml` show
//! what they wrote, validated by a schema pattern at the API server and parsed on use.

use std::{borrow::Cow, fmt, time::Duration};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The pattern the API server enforces: one or more `<number><unit>` groups, units ms|s|m|h.
pub const GO_DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// A positive duration written the Go way, e.g. `2m` or `1h30m`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GoDuration(pub String);

/// Why a duration string could not be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {value:?}: {why} (expected e.g. 90s, 2m, 1h30m)")]
pub struct InvalidDuration {
    /// The offending text.
    pub value: String,
    /// What is wrong with it.
    pub why: &'static str,
}

impl GoDuration {
    /// A duration from its text, not yet validated.
    pub fn new(text: impl Into<String>) -> Self {
        Self(text.into())
    }

    /// The duration as a std `Duration`; zero, negative or malformed values are errors.
    pub fn to_std(&self) -> Result<Duration, InvalidDuration> {
        let invalid = |why| InvalidDuration {
            value: self.0.clone(),
            why,
        };
        let text = self.0.trim();
        if text.is_empty() {
            return Err(invalid("empty"));
        }
        if text.starts_with('-') || text.starts_with('+') {
            return Err(invalid("must be positive and unsigned"));
        }
        let parsed: kube::core::Duration = text.parse().map_err(|_| invalid("not a Go duration"))?;
        let parsed: Duration = parsed.into();
        if parsed.is_zero() {
            return Err(invalid("must be greater than zero"));
        }
        Ok(parsed)
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl JsonSchema for GoDuration {
    fn schema_name() -> Cow<'static, str> {
        "GoDuration".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::generate::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": GO_DURATION_PATTERN,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(GoDuration::new("2m").to_std(), Ok(Duration::from_secs(120)));
        assert_eq!(GoDuration::new("1h30m").to_std(), Ok(Duration::from_secs(5400)));
        assert_eq!(GoDuration::new("1.5s").to_std(), Ok(Duration::from_millis(1500)));
        assert_eq!(GoDuration::new("250ms").to_std(), Ok(Duration::from_millis(250)));
    }

    #[test]
    fn rejects_zero_negative_and_garbage() {
        for bad in ["", "0s", "-5m", "+5m", "5", "five minutes", "5d"] {
            assert!(
                GoDuration::new(bad).to_std().is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn pattern_matches_what_the_parser_accepts() {
        let re = regex::Regex::new(GO_DURATION_PATTERN).unwrap();
        for good in ["2m", "1h30m", "1.5s", "250ms", "60m"] {
            assert!(re.is_match(good), "{good}");
        }
        for bad in ["", "-5m", "5", "5d", "m5", "1h 30m"] {
            assert!(!re.is_match(bad), "{bad}");
        }
    }
}
