//! A Service write, as kube-apiserver's Service strategy, validation and allocators treat it:
//! defaults, node ports (30000-32767, unique in the cluster) and `healthCheckNodePort`
//! allocated, the fields that only some types may carry refused elsewhere and cleared on a
//! type change, `loadBalancerClass` immutable, the status kept by updates of the object.

use std::collections::BTreeSet;

use lb_config::names::{is_dns_subdomain, is_qualified_name};
use serde_json::{json, Value};

use super::{int, parse_ip, Problems};
use crate::store::{Kind, Objects};

/// The node port range kube-apiserver allocates from by default.
pub(crate) const NODE_PORTS: std::ops::RangeInclusive<i64> = 30_000..=32_767;

const LB: &str = "LoadBalancer";

/// Checks and defaults the Service `object` (an update of `old`, when given).
pub(super) fn admit(old: Option<&Value>, object: &mut Value, all: &Objects, p: &mut Problems) {
    let old_spec = old.map(|o| o["spec"].clone()).unwrap_or(Value::Null);
    let old_type = old_spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
    if !object["spec"].is_object() {
        object["spec"] = json!({});
    }
    let id = (
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    );
    let spec = &mut object["spec"];
    let type_ = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
    spec["type"] = json!(type_);
    if !["ClusterIP", "NodePort", LB, "ExternalName"].contains(&type_.as_str()) {
        p.push("spec.type", format!("Unsupported value: \"{type_}\""));
        return;
    }
    if old.is_some() && old_type != type_ {
        drop_type_dependent_fields(spec, &old_type, &type_);
    }
    if old.is_some()
        && old_type == LB
        && type_ == LB
        && old_spec["loadBalancerClass"] != spec["loadBalancerClass"]
    {
        p.push(
            "spec.loadBalancerClass",
            format!(
                "Invalid value: {}: may not change once set",
                spec["loadBalancerClass"]
            ),
        );
    }
    let uses_node_ports = type_ == "NodePort"
        || (type_ == LB && spec["allocateLoadBalancerNodePorts"].as_bool() != Some(false));
    cluster_ip(spec, &old_spec);
    check_ip_families(spec, p);
    // Which node ports the others hold is a walk over every Service: only when this one has
    // or may get a node port (a cluster of 10,000 load balancers without them writes often).
    let names_a_node_port = spec["ports"]
        .as_array()
        .is_some_and(|ports| ports.iter().any(|port| !port["nodePort"].is_null()));
    let may_get_health_port = type_ == LB && spec["externalTrafficPolicy"] == "Local";
    let taken = if uses_node_ports
        || names_a_node_port
        || may_get_health_port
        || !spec["healthCheckNodePort"].is_null()
    {
        node_ports_in_use(all, &id)
    } else {
        BTreeSet::new()
    };
    ports(spec, uses_node_ports, &taken, p);
    load_balancer_fields(spec, &type_, p);
    traffic_policy(spec, &old_spec, &type_, &taken, p);
    affinity(spec, p);
    // The status belongs to the status subresource: a create starts empty, an update keeps it.
    object["status"] = match old {
        Some(old) if old_type == LB && type_ != LB => {
            let mut status = old["status"].clone();
            status["loadBalancer"] = json!({});
            status
        }
        Some(old) => old["status"].clone(),
        None => json!({"loadBalancer": {}}),
    };
}

/// What kube-apiserver clears itself when a Service changes type.
fn drop_type_dependent_fields(spec: &mut Value, old_type: &str, new_type: &str) {
    let Some(spec) = spec.as_object_mut() else {
        return;
    };
    let keeps_node_ports = new_type == "NodePort" || new_type == LB;
    if !keeps_node_ports {
        if let Some(Value::Array(ports)) = spec.get_mut("ports") {
            for port in ports {
                if let Some(port) = port.as_object_mut() {
                    port.remove("nodePort");
                }
            }
        }
        spec.remove("externalTrafficPolicy");
    }
    if old_type == LB && new_type != LB {
        for field in [
            "healthCheckNodePort",
            "loadBalancerClass",
            "allocateLoadBalancerNodePorts",
            "loadBalancerSourceRanges",
            "loadBalancerIP",
        ] {
            spec.remove(field);
        }
    }
}

fn cluster_ip(spec: &mut Value, old_spec: &Value) {
    if spec["type"] == "ExternalName" {
        return;
    }
    if let Some(ip) = old_spec["clusterIP"].as_str() {
        // Immutable: an update that leaves it out keeps it.
        spec["clusterIP"] = json!(ip);
        spec["clusterIPs"] = json!([ip]);
    } else if spec["clusterIP"].as_str().is_none_or(str::is_empty) {
        // Any stable address will do: nothing routes to it.
        let n = spec.to_string().len() % 250 + 1;
        spec["clusterIP"] = json!(format!("10.96.0.{n}"));
        spec["clusterIPs"] = json!([spec["clusterIP"]]);
    }
    ip_families(spec);
}

/// `ipFamilyPolicy` (default `SingleStack`) and `ipFamilies` (default IPv4, then IPv6 for a
/// dual-stack policy), as in a dual-stack cluster whose primary family is IPv4.
fn ip_families(spec: &mut Value) {
    let policy = spec["ipFamilyPolicy"]
        .as_str()
        .unwrap_or("SingleStack")
        .to_owned();
    spec["ipFamilyPolicy"] = json!(policy);
    if spec["ipFamilies"].as_array().is_none_or(Vec::is_empty) {
        spec["ipFamilies"] = match policy.as_str() {
            "SingleStack" => json!(["IPv4"]),
            _ => json!(["IPv4", "IPv6"]),
        };
    }
}

/// What [`ip_families`] filled in must be valid.
fn check_ip_families(spec: &Value, p: &mut Problems) {
    let policy = spec["ipFamilyPolicy"].as_str().unwrap_or_default();
    if !["SingleStack", "PreferDualStack", "RequireDualStack"].contains(&policy) {
        p.push(
            "spec.ipFamilyPolicy",
            format!("Unsupported value: \"{policy}\""),
        );
    }
    let families: Vec<&str> = spec["ipFamilies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    if families.iter().any(|f| *f != "IPv4" && *f != "IPv6")
        || (families.len() == 2 && families[0] == families[1])
    {
        p.push(
            "spec.ipFamilies",
            format!("Invalid value: {families:?}: must be IPv4 and/or IPv6, each once"),
        );
    }
    if families.len() > 2 || (policy == "SingleStack" && families.len() > 1) {
        p.push(
            "spec.ipFamilies",
            "Invalid value: too many families for the policy",
        );
    }
    if policy == "RequireDualStack" && families.len() < 2 {
        p.push(
            "spec.ipFamilies",
            "Invalid value: RequireDualStack needs two families",
        );
    }
}

/// Node ports (and health-check node ports) held by every Service but `except`.
fn node_ports_in_use(all: &Objects, except: &(String, String)) -> BTreeSet<i64> {
    all.iter()
        .filter(|((kind, ns, name), _)| {
            *kind == Kind::Service && (ns, name) != (&except.0, &except.1)
        })
        .flat_map(|(_, service)| {
            let spec = &service["spec"];
            let health = int(&spec["healthCheckNodePort"]);
            spec["ports"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|port| int(&port["nodePort"]))
                .chain(health)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn allocate(taken: &mut BTreeSet<i64>) -> Option<i64> {
    let port = NODE_PORTS.clone().find(|port| !taken.contains(port))?;
    taken.insert(port);
    Some(port)
}

fn ports(spec: &mut Value, uses_node_ports: bool, taken: &BTreeSet<i64>, p: &mut Problems) {
    let type_ = spec["type"].as_str().unwrap_or_default().to_owned();
    let Some(ports) = spec["ports"]
        .as_array_mut()
        .filter(|ports| !ports.is_empty())
    else {
        if type_ != "ExternalName" {
            p.push("spec.ports", "Required value");
        }
        return;
    };
    let mut taken = taken.clone();
    let count = ports.len();
    let mut names = BTreeSet::new();
    let mut listens = BTreeSet::new();
    for (i, port) in ports.iter_mut().enumerate() {
        let field = format!("spec.ports[{i}]");
        if !port.is_object() {
            p.push(field, "Invalid value: must be an object");
            continue;
        }
        let number = int(&port["port"]).unwrap_or(0);
        if !(1..=65_535).contains(&number) {
            p.push(
                format!("{field}.port"),
                format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
            );
        }
        let protocol = port["protocol"].as_str().unwrap_or("TCP").to_owned();
        port["protocol"] = json!(protocol);
        if !["TCP", "UDP", "SCTP"].contains(&protocol.as_str()) {
            p.push(
                format!("{field}.protocol"),
                format!("Unsupported value: \"{protocol}\""),
            );
        }
        let name = port["name"].as_str().unwrap_or_default().to_owned();
        if count > 1 && name.is_empty() {
            p.push(format!("{field}.name"), "Required value");
        } else if !name.is_empty() && !names.insert(name.clone()) {
            p.push(
                format!("{field}.name"),
                format!("Duplicate value: \"{name}\""),
            );
        }
        if !listens.insert((number, protocol.clone())) {
            p.push(
                field.clone(),
                format!("Duplicate value: {{\"Protocol\":\"{protocol}\",\"Port\":{number}}}"),
            );
        }
        if port["targetPort"].is_null() {
            port["targetPort"] = json!(number);
        }
        match int(&port["nodePort"]).filter(|n| *n != 0) {
            Some(_) if !uses_node_ports && type_ != LB => p.push(
                format!("{field}.nodePort"),
                format!("Forbidden: may not be used when `type` is '{type_}'"),
            ),
            Some(node_port) if !NODE_PORTS.contains(&node_port) => p.push(
                format!("{field}.nodePort"),
                format!("Invalid value: {node_port}: provided port is not in the valid range. The range of valid ports is 30000-32767"),
            ),
            Some(node_port) if taken.contains(&node_port) => p.push(
                format!("{field}.nodePort"),
                format!("Invalid value: {node_port}: provided port is already allocated"),
            ),
            Some(node_port) => {
                taken.insert(node_port);
            }
            None if uses_node_ports => match allocate(&mut taken) {
                Some(node_port) => port["nodePort"] = json!(node_port),
                None => p.push(format!("{field}.nodePort"), "Internal error: range is full"),
            },
            None => {
                if let Some(port) = port.as_object_mut() {
                    port.remove("nodePort");
                }
            }
        }
    }
}

fn load_balancer_fields(spec: &mut Value, type_: &str, p: &mut Problems) {
    let only_lb = "Forbidden: may only be used when `type` is 'LoadBalancer'";
    if type_ == LB {
        if spec["allocateLoadBalancerNodePorts"].is_null() {
            spec["allocateLoadBalancerNodePorts"] = json!(true);
        }
    } else {
        for field in [
            "loadBalancerClass",
            "allocateLoadBalancerNodePorts",
            "loadBalancerSourceRanges",
        ] {
            if !spec[field].is_null() {
                p.push(format!("spec.{field}"), only_lb);
            }
        }
    }
    if let Some(class) = spec["loadBalancerClass"].as_str() {
        if !is_qualified_name(class) {
            p.push("spec.loadBalancerClass", format!("Invalid value: \"{class}\": must be a label-style qualified name with a domain prefix"));
        }
    }
    for (i, range) in spec["loadBalancerSourceRanges"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let text = range.as_str().unwrap_or_default().trim();
        // An address and a prefix length its family can have (`/99` is no CIDR).
        let valid = text.split_once('/').is_some_and(|(ip, len)| {
            let bits = match ip.parse::<std::net::IpAddr>() {
                Ok(std::net::IpAddr::V4(_)) => 32,
                Ok(std::net::IpAddr::V6(_)) => 128,
                Err(_) => return false,
            };
            len.parse::<u8>().is_ok_and(|len| len <= bits)
        });
        if !valid {
            p.push(
                format!("spec.loadBalancerSourceRanges[{i}]"),
                format!("Invalid value: \"{text}\": must be a valid CIDR"),
            );
        }
    }
    if let Some(ip) = spec["loadBalancerIP"].as_str().filter(|ip| !ip.is_empty()) {
        parse_ip(ip, "spec.loadBalancerIP", p);
    }
}

fn traffic_policy(
    spec: &mut Value,
    old_spec: &Value,
    type_: &str,
    taken: &BTreeSet<i64>,
    p: &mut Problems,
) {
    let external = type_ == "NodePort" || type_ == LB;
    if !external {
        if !spec["externalTrafficPolicy"].is_null() {
            p.push(
                "spec.externalTrafficPolicy",
                "Invalid value: may only be set for externally-accessible services",
            );
        }
        if !spec["healthCheckNodePort"].is_null() {
            p.push("spec.healthCheckNodePort", "Forbidden: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'");
        }
        return;
    }
    let policy = spec["externalTrafficPolicy"]
        .as_str()
        .unwrap_or("Cluster")
        .to_owned();
    spec["externalTrafficPolicy"] = json!(policy);
    if policy != "Cluster" && policy != "Local" {
        p.push(
            "spec.externalTrafficPolicy",
            format!("Unsupported value: \"{policy}\""),
        );
    }
    let needs_health_port = type_ == LB && policy == "Local";
    if !needs_health_port {
        if !spec["healthCheckNodePort"].is_null()
            && int(&spec["healthCheckNodePort"]) != int(&old_spec["healthCheckNodePort"])
        {
            p.push("spec.healthCheckNodePort", "Forbidden: may only be set when `type` is 'LoadBalancer' and `externalTrafficPolicy` is 'Local'");
        }
        if let Some(spec) = spec.as_object_mut() {
            spec.remove("healthCheckNodePort");
        }
        return;
    }
    let mut taken = taken.clone();
    taken.extend(
        spec["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|port| int(&port["nodePort"])),
    );
    match int(&spec["healthCheckNodePort"]).or_else(|| int(&old_spec["healthCheckNodePort"])) {
        Some(port) => spec["healthCheckNodePort"] = json!(port),
        None => match allocate(&mut taken) {
            Some(port) => spec["healthCheckNodePort"] = json!(port),
            None => p.push("spec.healthCheckNodePort", "Internal error: range is full"),
        },
    }
}

fn affinity(spec: &mut Value, p: &mut Problems) {
    let affinity = spec["sessionAffinity"]
        .as_str()
        .unwrap_or("None")
        .to_owned();
    spec["sessionAffinity"] = json!(affinity);
    match affinity.as_str() {
        "None" => {
            if !spec["sessionAffinityConfig"].is_null() {
                p.push(
                    "spec.sessionAffinityConfig",
                    "Invalid value: must not be set when session affinity is None",
                );
            }
        }
        "ClientIP" => {
            let timeout = &mut spec["sessionAffinityConfig"]["clientIP"]["timeoutSeconds"];
            if timeout.is_null() {
                *timeout = json!(10_800);
            }
            let seconds = int(timeout).unwrap_or(0);
            if !(1..=86_400).contains(&seconds) {
                p.push(
                    "spec.sessionAffinityConfig.clientIP.timeoutSeconds",
                    format!("Invalid value: {seconds}: must be greater than 0 and less than 86400"),
                );
            }
        }
        other => p.push(
            "spec.sessionAffinity",
            format!("Unsupported value: \"{other}\""),
        ),
    }
}

/// A status written through the subresource: every ingress needs an address or a hostname,
/// `ipMode` needs an address and is `VIP` unless set, and port errors are condition reasons.
pub(super) fn admit_status(object: &mut Value, p: &mut Problems) {
    conditions(&object["status"]["conditions"], p);
    let Some(ingresses) = object["status"]["loadBalancer"]["ingress"].as_array_mut() else {
        return;
    };
    for (i, ingress) in ingresses.iter_mut().enumerate() {
        let field = format!("status.loadBalancer.ingress[{i}]");
        if !ingress.is_object() {
            p.push(field, "Invalid value: must be an object");
            continue;
        }
        match ingress["ip"].as_str() {
            Some(ip) => {
                parse_ip(ip, &format!("{field}.ip"), p);
                if ingress["ipMode"].is_null() {
                    ingress["ipMode"] = json!("VIP");
                }
            }
            None if !ingress["ipMode"].is_null() => p.push(
                format!("{field}.ipMode"),
                "Forbidden: may not be specified when `ip` is not",
            ),
            None => {}
        }
        if let Some(mode) = ingress["ipMode"].as_str() {
            if mode != "VIP" && mode != "Proxy" {
                p.push(
                    format!("{field}.ipMode"),
                    format!("Unsupported value: \"{mode}\""),
                );
            }
        }
        for (j, port) in ingress["ports"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
        {
            let field = format!("{field}.ports[{j}]");
            match int(&port["port"]) {
                None => p.push(format!("{field}.port"), "Required value"),
                Some(number) if !(1..=65_535).contains(&number) => p.push(
                    format!("{field}.port"),
                    format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
                ),
                Some(_) => {}
            }
            match port["protocol"].as_str() {
                None => p.push(format!("{field}.protocol"), "Required value"),
                Some("TCP" | "UDP" | "SCTP") => {}
                Some(other) => p.push(
                    format!("{field}.protocol"),
                    format!("Unsupported value: \"{other}\": supported values: \"SCTP\", \"TCP\", \"UDP\""),
                ),
            }
            if let Some(error) = port["error"].as_str() {
                if !is_condition_reason(error) {
                    p.push(format!("{field}.error"), format!("Invalid value: \"{error}\": must be a CamelCase reason, optionally with a domain prefix"));
                }
            }
        }
    }
}

/// `metav1.Condition`s: a type, a status, a reason, a transition time.
fn conditions(conditions: &Value, p: &mut Problems) {
    for (i, condition) in conditions.as_array().into_iter().flatten().enumerate() {
        let field = format!("status.conditions[{i}]");
        if condition["type"].as_str().is_none_or(str::is_empty) {
            p.push(format!("{field}.type"), "Required value");
        }
        let status = condition["status"].as_str().unwrap_or_default();
        if !["True", "False", "Unknown"].contains(&status) {
            p.push(
                format!("{field}.status"),
                format!("Unsupported value: \"{status}\""),
            );
        }
        match condition["reason"].as_str() {
            None | Some("") => p.push(format!("{field}.reason"), "Required value"),
            Some(reason) if reason.len() > 1024 => p.push(
                format!("{field}.reason"),
                "Too long: may not be more than 1024 bytes",
            ),
            Some(reason) if !is_metav1_reason(reason) => p.push(
                format!("{field}.reason"),
                format!("Invalid value: \"{reason}\": a condition reason must start with alphabetic character, optionally followed by a string of alphanumeric characters or '_,:', and must end with an alphanumeric character or '_' (regex used for validation is '[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?')"),
            ),
            Some(_) => {}
        }
        if condition["lastTransitionTime"].as_str().is_none() {
            p.push(format!("{field}.lastTransitionTime"), "Required value");
        }
        if condition["message"]
            .as_str()
            .is_some_and(|m| m.len() > 32_768)
        {
            p.push(
                format!("{field}.message"),
                "Too long: may not be more than 32768 bytes",
            );
        }
    }
}

/// A `metav1.Condition` reason: `^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`.
fn is_metav1_reason(reason: &str) -> bool {
    let bytes = reason.as_bytes();
    let (Some(first), Some(last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    first.is_ascii_alphabetic()
        && (last.is_ascii_alphanumeric() || *last == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"_,:".contains(b))
}

/// `[prefix/]Reason`, as port errors must be.
fn is_condition_reason(text: &str) -> bool {
    let reason =
        text.rsplit_once('/').map_or(
            text,
            |(prefix, reason)| {
                if is_dns_subdomain(prefix) {
                    reason
                } else {
                    ""
                }
            },
        );
    !reason.is_empty()
        && text.len() <= 316
        && reason.starts_with(|c: char| c.is_ascii_alphanumeric())
        && reason
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}
