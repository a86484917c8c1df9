//! Label and field selectors, as list and watch requests carry them.

use serde_json::Value;

use super::store::{ApiError, Kind};

/// One term of a selector.
#[derive(Clone, Debug)]
enum Term {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

/// The objects a request is about.
#[derive(Clone, Debug, Default)]
pub(crate) struct Selector {
    labels: Vec<Term>,
    fields: Vec<Term>,
}

impl Selector {
    /// From the `labelSelector` and `fieldSelector` parameters; `400` for what the server
    /// does not understand.
    pub(crate) fn parse(
        kind: Kind,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Self, ApiError> {
        let labels = terms(labels.unwrap_or_default())?;
        let fields = terms(fields.unwrap_or_default())?;
        for term in &fields {
            let (Term::Equals(field, _) | Term::NotEquals(field, _)) = term else {
                return Err(ApiError::bad_request(
                    "field selectors support only = and !=",
                ));
            };
            let known = matches!(field.as_str(), "metadata.name" | "metadata.namespace")
                || (kind == Kind::Secret && field == "type");
            if !known {
                return Err(ApiError::bad_request(format!(
                    "field label not supported: {field}"
                )));
            }
        }
        Ok(Selector { labels, fields })
    }

    /// Whether `object` is selected.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let label = |key: &str| {
            object["metadata"]["labels"][key]
                .as_str()
                .map(str::to_owned)
        };
        let field = |key: &str| match key {
            "metadata.name" => object["metadata"]["name"].as_str().map(str::to_owned),
            "metadata.namespace" => object["metadata"]["namespace"].as_str().map(str::to_owned),
            "type" => object["type"].as_str().map(str::to_owned),
            _ => None,
        };
        self.labels.iter().all(|term| holds(term, label))
            && self.fields.iter().all(|term| holds(term, field))
    }
}

fn holds(term: &Term, value_of: impl Fn(&str) -> Option<String>) -> bool {
    match term {
        Term::Equals(key, value) => value_of(key).as_deref() == Some(value),
        Term::NotEquals(key, value) => value_of(key).as_deref() != Some(value),
        Term::Exists(key) => value_of(key).is_some(),
        Term::Absent(key) => value_of(key).is_none(),
    }
}

fn terms(text: &str) -> Result<Vec<Term>, ApiError> {
    text.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|term| {
            let invalid =
                || ApiError::bad_request(format!("unable to parse requirement: `{term}`"));
            if term.contains(" in ") || term.contains(" notin ") || term.contains('(') {
                return Err(invalid());
            }
            let owned = |s: &str| s.trim().to_owned();
            if let Some((key, value)) = term.split_once("!=") {
                Ok(Term::NotEquals(owned(key), owned(value)))
            } else if let Some((key, value)) =
                term.split_once("==").or_else(|| term.split_once('='))
            {
                Ok(Term::Equals(owned(key), owned(value)))
            } else if let Some(key) = term.strip_prefix('!') {
                Ok(Term::Absent(owned(key)))
            } else if term.contains(char::is_whitespace) {
                Err(invalid())
            } else {
                Ok(Term::Exists(owned(term)))
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn labels_and_fields_select() {
        let object = json!({"metadata": {"name": "a", "namespace": "ns", "labels": {"k": "v"}}, "type": "kubernetes.io/tls"});
        let pick = |labels: &str, fields: &str| {
            Selector::parse(Kind::Secret, Some(labels), Some(fields))
                .expect("parses")
                .matches(&object)
        };
        assert!(pick("k=v", "metadata.name=a"));
        assert!(pick("k", "type=kubernetes.io/tls"));
        assert!(!pick("k!=v", ""));
        assert!(!pick("!k", ""));
        assert!(!pick("", "metadata.namespace=other"));
        assert!(Selector::parse(Kind::Service, None, Some("spec.type=x")).is_err());
    }
}
