//! EndpointSlices, Secrets, Events and Leases, as kube-apiserver validates them.

use std::collections::BTreeSet;
use std::net::IpAddr;

use serde_json::{json, Value};

use super::{int, parse_ip, Policy, Problems};

/// Endpoints one slice may hold.
const MAX_ENDPOINTS: usize = 1000;
/// Addresses one endpoint may hold.
const MAX_ADDRESSES: usize = 100;

/// An EndpointSlice: `addressType` required and immutable; every address of that type and
/// routable (not loopback, link-local or multicast); ports named uniquely.
pub(super) fn endpoint_slice(
    old: Option<&Value>,
    object: &mut Value,
    policy: &Policy,
    p: &mut Problems,
) {
    let address_type = object["addressType"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    match address_type.as_str() {
        "" => p.push("addressType", "Required value"),
        "IPv4" | "IPv6" | "FQDN" => {}
        other => p.push(
            "addressType",
            format!(
                "Unsupported value: \"{other}\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""
            ),
        ),
    }
    if let Some(old_type) = old.and_then(|o| o["addressType"].as_str()) {
        if old_type != address_type {
            p.push("addressType", "Invalid value: field is immutable");
        }
    }
    let endpoints = object["endpoints"].as_array().cloned().unwrap_or_default();
    if endpoints.len() > MAX_ENDPOINTS {
        p.push(
            "endpoints",
            format!(
                "Too many: {}: must have at most {MAX_ENDPOINTS} items",
                endpoints.len()
            ),
        );
    }
    if object["endpoints"].is_null() {
        // A list the server keeps even when empty (`endpoints: null` is accepted as []).
        object["endpoints"] = json!([]);
    }
    for (i, endpoint) in endpoints.iter().enumerate() {
        let field = format!("endpoints[{i}].addresses");
        let addresses = endpoint["addresses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if addresses.is_empty() || addresses.len() > MAX_ADDRESSES {
            p.push(&field, format!("Invalid value: {}: must contain at least 1 and at most {MAX_ADDRESSES} addresses", addresses.len()));
        }
        for (j, address) in addresses.iter().enumerate() {
            let text = address.as_str().unwrap_or_default();
            let field = format!("{field}[{j}]");
            if address_type != "FQDN" {
                if let Some(ip) = parse_ip(text, &field, p) {
                    check_endpoint_ip(ip, &address_type, text, &field, policy, p);
                }
            }
        }
    }
    let mut names = BTreeSet::new();
    if let Some(ports) = object["ports"].as_array_mut() {
        for (i, port) in ports.iter_mut().enumerate() {
            if !port.is_object() {
                p.push(format!("ports[{i}]"), "Invalid value: must be an object");
                continue;
            }
            let name = port["name"].as_str().unwrap_or_default().to_owned();
            if !names.insert(name.clone()) {
                p.push(
                    format!("ports[{i}].name"),
                    format!("Duplicate value: \"{name}\""),
                );
            }
            if let Some(number) = int(&port["port"]) {
                if !(1..=65_535).contains(&number) {
                    p.push(
                        format!("ports[{i}].port"),
                        format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
                    );
                }
            }
            if port["protocol"].is_null() {
                port["protocol"] = json!("TCP");
            }
        }
    }
}

fn check_endpoint_ip(
    ip: IpAddr,
    address_type: &str,
    text: &str,
    field: &str,
    policy: &Policy,
    p: &mut Problems,
) {
    let family_ok = match ip {
        IpAddr::V4(_) => address_type == "IPv4",
        IpAddr::V6(_) => address_type == "IPv6",
    };
    if !family_ok {
        p.push(
            field,
            format!("Invalid value: \"{text}\": must be an {address_type} address"),
        );
    }
    if ip.is_loopback() && !policy.allow_loopback_endpoints {
        p.push(field, format!("Invalid value: \"{text}\": may not be in the loopback range (127.0.0.0/8, ::1/128)"));
    }
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local {
        p.push(field, format!("Invalid value: \"{text}\": may not be in the link-local range (169.254.0.0/16, fe80::/10)"));
    }
    if ip.is_multicast() {
        p.push(
            field,
            format!("Invalid value: \"{text}\": may not be in the multicast range"),
        );
    }
    if ip.is_unspecified() {
        p.push(
            field,
            format!("Invalid value: \"{text}\": may not be unspecified (0.0.0.0, ::)"),
        );
    }
}

/// A Secret: a `kubernetes.io/tls` one carries `tls.crt` and `tls.key`; data values are
/// base64 (the JSON encoding of bytes).
pub(super) fn secret(object: &mut Value, p: &mut Problems) {
    use base64::Engine as _;
    if object["type"].is_null() {
        object["type"] = json!("Opaque");
    }
    if let Some(data) = object["data"].as_object() {
        for (key, value) in data {
            let decodes = value
                .as_str()
                .is_some_and(|v| base64::engine::general_purpose::STANDARD.decode(v).is_ok());
            if !decodes {
                p.push(
                    format!("data[{key}]"),
                    "Invalid value: must be base64-encoded bytes",
                );
            }
        }
    }
    if object["type"] == "kubernetes.io/tls" {
        for key in ["tls.crt", "tls.key"] {
            if object["data"][key].is_null() {
                p.push(format!("data[{key}]"), "Required value");
            }
        }
    }
}

/// An `events.k8s.io/v1` Event: who reports it, what it is about, what happened.
pub(super) fn event(object: &mut Value, p: &mut Problems) {
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
        "eventTime",
    ] {
        if object[field].as_str().is_none_or(str::is_empty) {
            p.push(field, "Required value");
        }
    }
    let type_ = object["type"].as_str().unwrap_or_default();
    if type_ != "Normal" && type_ != "Warning" {
        p.push(
            "type",
            format!("Unsupported value: \"{type_}\": supported values: \"Normal\", \"Warning\""),
        );
    }
    if object["note"]
        .as_str()
        .is_some_and(|note| note.len() > 1024)
    {
        p.push("note", "Too long: may not be more than 1024 bytes");
    }
    if object["regarding"]["kind"].as_str().is_none() {
        p.push("regarding.kind", "Required value");
    }
}

/// A Lease, as `ValidateLeaseSpec` checks it: a positive duration, transitions never negative,
/// a preferred holder only with a strategy.
pub(super) fn lease(object: &Value, p: &mut Problems) {
    let spec = &object["spec"];
    if let Some(duration) = int(&spec["leaseDurationSeconds"]).filter(|d| *d <= 0) {
        p.push(
            "spec.leaseDurationSeconds",
            format!("Invalid value: {duration}: must be greater than 0"),
        );
    }
    if let Some(transitions) = int(&spec["leaseTransitions"]).filter(|t| *t < 0) {
        p.push(
            "spec.leaseTransitions",
            format!("Invalid value: {transitions}: must be greater than or equal to 0"),
        );
    }
    let set = |field: &str| spec[field].as_str().is_some_and(|v| !v.is_empty());
    if set("preferredHolder") && !set("strategy") {
        p.push(
            "spec.preferredHolder",
            "Forbidden: may only be specified if `strategy` is defined",
        );
    }
}
