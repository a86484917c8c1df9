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
