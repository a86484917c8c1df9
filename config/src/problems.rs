//! Diagnostics for configuration input: every problem carries the path of the field it is
//! about (`services[2].ports[0].tls.certificates[1].key`), and validation collects all of them
//! instead of stopping at the first, so an operator fixes a file in one pass.

use std::fmt;

/// One thing wrong with a configuration, located by its field path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// Dotted field path from the root of the file, with `[i]` for list items.
    pub path: String,
    /// What is wrong and, where it helps, what would be accepted.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in one configuration, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problems(Vec<Problem>);

impl Problems {
    /// The problems, in the order they were found.
    pub fn iter(&self) -> impl Iterator<Item = &Problem> {
        self.0.iter()
    }

    /// How many problems there are.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing is wrong.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn push(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Records a problem whose path is relative to `path` (a nested parse error).
    pub(crate) fn push_nested(&mut self, path: &FieldPath, inner: &str, message: &str) {
        let full = match (path.to_string(), inner) {
            (outer, "" | ".") => outer,
            (outer, inner) if outer.is_empty() => inner.to_owned(),
            (outer, inner) if inner.starts_with('[') => format!("{outer}{inner}"),
            (outer, inner) => format!("{outer}.{inner}"),
        };
        self.0.push(Problem {
            path: full,
            message: message.to_owned(),
        });
    }
}

impl fmt::Display for Problems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// A field path under construction while walking the file; cheap to extend and print.
#[derive(Clone, Debug, Default)]
pub(crate) struct FieldPath(Vec<Segment>);

#[derive(Clone, Debug)]
enum Segment {
    Field(&'static str),
    Key(String),
    Index(usize),
}

impl FieldPath {
    pub(crate) fn root() -> Self {
        Self(Vec::new())
    }

    /// `self.name`
    pub(crate) fn field(&self, name: &'static str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Field(name));
        next
    }

    /// `self.key` for a key chosen by the operator (a map entry).
    pub(crate) fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    /// `self[i]`
    pub(crate) fn index(&self, i: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(i));
        next
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Field(name) if i == 0 => f.write_str(name)?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_print_like_the_file() {
        let path = FieldPath::root()
            .field("services")
            .index(2)
            .field("ports")
            .index(0)
            .field("tls");
        assert_eq!(path.to_string(), "services[2].ports[0].tls");
    }

    #[test]
    fn nested_paths_join_without_doubled_separators() {
        let mut problems = Problems::default();
        let outer = FieldPath::root().field("services").index(1);
        problems.push_nested(&outer, "ports[0].port", "bad");
        problems.push_nested(&outer, ".", "whole item bad");
        problems.push_nested(&FieldPath::root(), "admin", "top");
        let paths: Vec<_> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["services[1].ports[0].port", "services[1]", "admin"]);
    }
}
