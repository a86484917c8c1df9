//! The operator's parameters, with parsing that produces messages an operator can act on.

use std::fmt::Display;
use std::str::FromStr;

/// The `params:` of a port's policy, as given in the configuration.
#[derive(Clone, Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl Params {
    /// Parameters from name/value pairs.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Self {
        Params(pairs)
    }

    /// The value of `name`, if given.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// `name` parsed as `T`, or `default` when not given.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        match self.get(name) {
            None => Ok(default),
            Some(text) => text
                .trim()
                .parse()
                .map_err(|err| format!("parameter `{name}`: `{text}` is not valid ({err})")),
        }
    }

    /// `name` as a duration in milliseconds, written with a unit (`500ms`, `5s`, `2m`), or
    /// `default` when not given; a value outside `range` is refused.
    pub fn duration_ms_or(
        &self,
        name: &str,
        default: u32,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<u32, String> {
        let Some(text) = self.get(name) else {
            return Ok(default);
        };
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let factor = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            _ => {
                return Err(format!(
                    "parameter `{name}`: `{text}` is not a duration like 500ms, 5s or 2m"
                ))
            }
        };
        let ms = number
            .parse::<u32>()
            .ok()
            .and_then(|n| n.checked_mul(factor))
            .filter(|ms| range.contains(ms))
            .ok_or_else(|| {
                format!(
                    "parameter `{name}`: `{text}` is out of range {}ms..={}ms",
                    range.start(),
                    range.end()
                )
            })?;
        Ok(ms)
    }

    /// Refuses parameters this plugin does not know, naming the ones it takes.
    pub fn reject_unknown(&self, known: &[&str]) -> Result<(), String> {
        match self.0.iter().find(|(n, _)| !known.contains(&n.as_str())) {
            None => Ok(()),
            Some((name, _)) if known.is_empty() => Err(format!(
                "unknown parameter `{name}`: this plugin takes none"
            )),
            Some((name, _)) => Err(format!(
                "unknown parameter `{name}`: this plugin takes {}",
                known.join(", ")
            )),
        }
    }
}
