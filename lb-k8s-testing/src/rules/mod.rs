//! What the API server checks and fills in on a write, kind by kind, as kube-apiserver's
//! validation and defaulting do for the fields Gantry and its tests touch. A refusal is the
//! 422 `Invalid` the real server answers, with the field path in the message.

mod objects;
mod service;

use std::net::IpAddr;

use lb_config::names::{is_dns_label, is_dns_subdomain};
use serde_json::Value;

use super::store::{ApiError, Kind, Objects};

/// The server's choices that tests may change.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// Accept EndpointSlice addresses in 127.0.0.0/8 and ::1, which a real API server refuses.
    /// Tests whose backends are loopback origins turn it on; nothing else may.
    pub allow_loopback_endpoints: bool,
}

/// Checks `object` (new, or the result of an update of `old`) and fills in its defaults.
pub(crate) fn admit(
    kind: Kind,
    old: Option<&Value>,
    object: &mut Value,
    all: &Objects,
    policy: &Policy,
) -> Result<(), ApiError> {
    let mut problems = Problems::default();
    check_name(kind, object, &mut problems);
    match kind {
        Kind::Service => service::admit(old, object, all, &mut problems),
        Kind::EndpointSlice => objects::endpoint_slice(old, object, policy, &mut problems),
        Kind::Secret => objects::secret(object, &mut problems),
        Kind::Event => objects::event(object, &mut problems),
        Kind::Lease => objects::lease(object, &mut problems),
        Kind::Node => {}
    }
    problems.into_result(kind, object)
}

/// Checks a status written through the `status` subresource.
pub(crate) fn admit_status(kind: Kind, object: &mut Value) -> Result<(), ApiError> {
    let mut problems = Problems::default();
    if kind == Kind::Service {
        service::admit_status(object, &mut problems);
    }
    problems.into_result(kind, object)
}

/// The field errors found in one write.
#[derive(Default)]
pub(crate) struct Problems(Vec<String>);

impl Problems {
    /// `field`: `message`.
    pub(crate) fn push(&mut self, field: impl std::fmt::Display, message: impl std::fmt::Display) {
        self.0.push(format!("{field}: {message}"));
    }

    fn into_result(self, kind: Kind, object: &Value) -> Result<(), ApiError> {
        if self.0.is_empty() {
            return Ok(());
        }
        let name = object["metadata"]["name"].as_str().unwrap_or_default();
        Err(ApiError::invalid(format!(
            "{} \"{name}\" is invalid: {}",
            kind.qualified_name(),
            self.0.join(", ")
        )))
    }
}

fn check_name(kind: Kind, object: &Value, problems: &mut Problems) {
    let name = object["metadata"]["name"].as_str().unwrap_or_default();
    let ok = match kind {
        Kind::Service => is_dns_label(name) && name.starts_with(|c: char| c.is_ascii_lowercase()),
        // Event names carry the regarding object's name and a hex suffix.
        _ => is_dns_subdomain(name),
    };
    if name.is_empty() {
        problems.push(
            "metadata.name",
            "Required value: name or generateName is required",
        );
    } else if !ok {
        problems.push(
            "metadata.name",
            format!("Invalid value: \"{name}\": a lowercase RFC 1123 name is required"),
        );
    }
}

/// A parsed address, or a field error.
pub(crate) fn parse_ip(text: &str, field: &str, problems: &mut Problems) -> Option<IpAddr> {
    match text.parse() {
        Ok(ip) => Some(ip),
        Err(_) => {
            problems.push(
                field,
                format!("Invalid value: \"{text}\": must be a valid IP address"),
            );
            None
        }
    }
}

/// The integer at `value`, when it is one.
pub(crate) fn int(value: &Value) -> Option<i64> {
    value.as_i64()
}
