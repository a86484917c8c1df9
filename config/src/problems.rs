//! Diagnostics for configuration input: every problem carries the path of the field it is
//! about (`services[2].ports[0].tls.certificates[1].key` in the file; `Service default/shop
//! ports[0].tls` for a Kubernetes object), and validation collects all of them instead of
//! stopping at the first, so an operator fixes a file (or an object) in one pass.

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

    /// Records a problem at `path`.
    pub fn push(&mut self, path: &FieldPath, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.to_string(),
            message: message.into(),
        });
    }

    /// Records every problem of `other`, in its order.
    pub fn extend(&mut self, other: Problems) {
        self.0.extend(other.0);
    }

    /// Records a problem whose path is relative to `path` (a nested parse error).
    pub(crate) fn push_nested(&mut self, path: &FieldPath, inner: &str, message: &str) {
        let separator = if matches!(path.0.last(), Some(Segment::Object(_))) {
            " "
        } else {
            "."
        };
        let full = match (path.to_string(), inner) {
            (outer, "" | ".") => outer,
            (outer, inner) if outer.is_empty() => inner.to_owned(),
            (outer, inner) if inner.starts_with('[') => format!("{outer}{inner}"),
            (outer, inner) => format!("{outer}{separator}{inner}"),
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

/// Where a part of the input is: a field path from the root of the file
/// (`services[2].ports[0]`), or from an object of another source (`Service default/shop
/// ports[0]`). Cheap to extend and print.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(Vec<Segment>);

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Segment {
    /// An object that is the root of its own input (`Service default/shop`).
    Object(String),
    Field(&'static str),
    Key(String),
    Index(usize),
}

impl FieldPath {
    /// The root of the file.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// The root of an object given by another source: its kind and name
    /// (`FieldPath::object("Service", "default/shop")`).
    pub fn object(kind: &str, name: &str) -> Self {
        Self(vec![Segment::Object(format!("{kind} {name}"))])
    }

    /// `self.name`
    pub fn field(&self, name: &'static str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Field(name));
        next
    }

    /// `self.key` for a key chosen by the operator (a map entry).
    pub fn key(&self, key: &str) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Key(key.to_owned()));
        next
    }

    /// `self[i]`
    pub fn index(&self, i: usize) -> Self {
        let mut next = self.clone();
        next.0.push(Segment::Index(i));
        next
    }

    /// Whether this path is `prefix` or lies under it, segment by segment (`Service
    /// default/web-2` does not lie under `Service default/web`, though its text starts so).
    pub fn starts_with(&self, prefix: &FieldPath) -> bool {
        self.0.starts_with(&prefix.0)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut after_object = false;
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Object(object) => f.write_str(object)?,
                Segment::Field(name) if i == 0 => f.write_str(name)?,
                Segment::Field(name) if after_object => write!(f, " {name}")?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Key(key) => write!(f, ".{key}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
            }
            after_object = matches!(segment, Segment::Object(_));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_lies_under_another_segment_by_segment_not_by_text() {
        let web = FieldPath::object("Service", "default/web");
        let port = web.field("ports").index(0);
        assert!(port.starts_with(&web));
        assert!(web.starts_with(&web));
        assert!(!web.starts_with(&port));
        let other = FieldPath::object("Service", "default/web-2").field("ports");
        assert!(other.to_string().starts_with(&web.to_string()));
        assert!(!other.starts_with(&web));
    }

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
    fn an_object_path_starts_with_its_kind_and_name() {
        let path = FieldPath::object("Service", "default/shop")
            .field("ports")
            .index(1)
            .field("tls");
        assert_eq!(path.to_string(), "Service default/shop ports[1].tls");
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
