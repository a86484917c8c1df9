//! Tolerant parsing of list items and sections, so one malformed service or port does not hide
//! the problems in the others: the item's own parse error is kept with its relative path and
//! reported next to every other problem in the file.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

/// A section of the file that either parsed as `T` or failed with a located message.
#[derive(Debug)]
pub enum Lenient<T> {
    /// The section parsed.
    Parsed(T),
    /// The section did not parse; `path` is relative to the section itself.
    Invalid {
        /// Field path inside the section (`ports[0].port`), or `.` for the section itself.
        path: String,
        /// The parser's message.
        message: String,
    },
}

impl<T> Lenient<T> {
    /// The parsed value, if it parsed.
    pub fn parsed(&self) -> Option<&T> {
        match self {
            Lenient::Parsed(value) => Some(value),
            Lenient::Invalid { .. } => None,
        }
    }
}

impl<'de, T: DeserializeOwned> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // Buffer the section as a YAML value first: a syntax error still fails the whole file
        // (nothing sensible can be recovered), but a type error stays local to this section.
        let value = serde_yaml::Value::deserialize(deserializer)?;
        Ok(match serde_path_to_error::deserialize::<_, T>(value) {
            Ok(parsed) => Lenient::Parsed(parsed),
            Err(err) => Lenient::Invalid {
                path: err.path().to_string(),
                message: err.into_inner().to_string(),
            },
        })
    }
}

/// A length of time written with a unit: `10s`, `500ms`, `2m`, `1h30m`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DurationText(pub std::time::Duration);

impl<'de> Deserialize<'de> for DurationText {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text)
            .map(DurationText)
            .map_err(|err| {
                serde::de::Error::custom(format!(
                    "invalid duration `{text}` ({err}): write a number with a unit, e.g. 10s, 500ms, 2m"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Item {
        #[allow(dead_code)]
        port: u16,
    }

    #[test]
    fn a_bad_item_keeps_its_relative_path_and_the_others_parse() {
        let items: Vec<Lenient<Item>> =
            serde_yaml::from_str("- port: 80\n- port: 70000\n- prot: 1\n").expect("yaml");
        assert!(matches!(items[0], Lenient::Parsed(_)));
        match &items[1] {
            Lenient::Invalid { path, message } => {
                assert_eq!(path, "port");
                assert!(message.contains("70000"), "{message}");
            }
            other => panic!("expected invalid, got {other:?}"),
        }
        match &items[2] {
            Lenient::Invalid { message, .. } => assert!(message.contains("prot"), "{message}"),
            other => panic!("expected invalid, got {other:?}"),
        }
    }

    #[test]
    fn durations_need_a_unit() {
        let ok: DurationText = serde_yaml::from_str("1m30s").expect("duration");
        assert_eq!(ok.0, std::time::Duration::from_secs(90));
        let err = serde_yaml::from_str::<DurationText>("10").expect_err("no unit");
        assert!(err.to_string().contains("e.g. 10s"), "{err}");
    }
}
