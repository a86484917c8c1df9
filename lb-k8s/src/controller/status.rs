//! The status Gantry wants on a LoadBalancer Service, and whether the one it has differs:
//! `status.loadBalancer.ingress` (the address, `ipMode: Proxy`, every port with the error of
//! those not served) and one condition of Gantry's own, `LoadBalancerReady`, that says why
//! a Service has no address or keeps an older configuration. Other writers' conditions are
//! kept as they are.

use std::net::IpAddr;

use k8s_openapi::api::core::v1::ServiceStatus;
use serde_json::{json, Value};

use super::writer::truncate;
use crate::index::translate::{PortOutcome, NO_NODE_PORT, UNSUPPORTED_PROTOCOL};

/// The longest condition message the API accepts, in bytes.
const MAX_MESSAGE: usize = 32_768;

/// The type of Gantry's condition.
pub const CONDITION: &str = "LoadBalancerReady";

/// What Gantry says of a load balancer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// Its addresses (one per family) and ports, once it has them.
    pub ingress: Vec<(IpAddr, Vec<PortOutcome>)>,
    /// Whether all is well, and if not, why (a reason and a message).
    pub trouble: Option<(String, String)>,
}

/// The `status` to write for `wanted`, or `None` when `current` already says it. A
/// condition keeps its transition time while its status does not change.
pub fn to_write(
    current: Option<&ServiceStatus>,
    wanted: &Wanted,
    generation: Option<i64>,
    now: &str,
) -> Option<Value> {
    let current = serde_json::to_value(current.cloned().unwrap_or_default()).unwrap_or(Value::Null);
    let ingress: Value = wanted
        .ingress
        .iter()
        .map(|(ip, ports)| {
            json!({
                "ip": ip.to_string(),
                "ipMode": "Proxy",
                "ports": ports.iter().map(|p| {
                    let mut port = json!({"port": p.port, "protocol": p.protocol});
                    if let Some(error) = p.error {
                        port["error"] = json!(error);
                    }
                    port
                }).collect::<Vec<_>>(),
            })
        })
        .collect();
    let (status, reason, message) = match &wanted.trouble {
        None => (
            "True",
            "Provisioned".to_owned(),
            "the load balancer serves the Service".to_owned(),
        ),
        Some((reason, message)) => (
            "False",
            reason.clone(),
            truncate(message.clone(), MAX_MESSAGE),
        ),
    };
    let others: Vec<Value> = current["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] != CONDITION)
        .cloned()
        .collect();
    let previous = current["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["type"] == CONDITION);
    let since = match previous {
        Some(p) if p["status"] == status => p["lastTransitionTime"].clone(),
        _ => json!(now),
    };
    let mut condition = json!({
        "type": CONDITION,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
    });
    if let Some(generation) = generation {
        condition["observedGeneration"] = json!(generation);
    }
    let mut conditions = others;
    conditions.push(condition);
    let current_ingress = current["loadBalancer"]["ingress"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let current_ours = previous.cloned().map(|mut c| {
        // A condition the server read back may differ only in fields Gantry does not set.
        if let Some(c) = c.as_object_mut() {
            c.retain(|k, _| {
                [
                    "type",
                    "status",
                    "reason",
                    "message",
                    "lastTransitionTime",
                    "observedGeneration",
                ]
                .contains(&k.as_str())
            });
        }
        c
    });
    let same =
        Value::Array(current_ingress) == ingress && current_ours.as_ref() == conditions.last();
    (!same).then(|| json!({"loadBalancer": {"ingress": ingress}, "conditions": conditions}))
}

/// What a load balancer's status already says of it, as Gantry wrote it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Said {
    /// The trouble its condition reports (a reason and a message), when it is `False`.
    pub trouble: Option<(String, String)>,
    /// The ports its first address shows as not served.
    pub skipped: Vec<PortOutcome>,
}

/// What `current` says, so that a replica taking the Lease over, or a restart, does not
/// report again what was reported already (the Events of the trouble and the skipped ports).
pub fn said(current: Option<&ServiceStatus>) -> Said {
    let Some(current) = current else {
        return Said::default();
    };
    let trouble = current
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == CONDITION && c.status == "False")
        .map(|c| (c.reason.clone(), c.message.clone()));
    let skipped = current
        .load_balancer
        .as_ref()
        .and_then(|lb| lb.ingress.as_ref())
        .and_then(|ingress| ingress.first())
        .and_then(|first| first.ports.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|port| {
            // Only the errors Gantry writes; another's would not be Gantry's to report.
            let error = [UNSUPPORTED_PROTOCOL, NO_NODE_PORT]
                .into_iter()
                .find(|known| port.error.as_deref() == Some(*known))?;
            Some(PortOutcome {
                port: u16::try_from(port.port).ok()?,
                protocol: port.protocol.clone(),
                error: Some(error),
            })
        })
        .collect();
    Said { trouble, skipped }
}

/// The `status` that removes Gantry's part (its ingress and its condition), or `None` when
/// there is nothing of it.
pub fn to_clear(current: Option<&ServiceStatus>) -> Option<Value> {
    let current = serde_json::to_value(current.cloned().unwrap_or_default()).unwrap_or(Value::Null);
    let has_ingress = current["loadBalancer"]["ingress"]
        .as_array()
        .is_some_and(|i| !i.is_empty());
    let conditions = current["conditions"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let others: Vec<Value> = conditions
        .iter()
        .filter(|c| c["type"] != CONDITION)
        .cloned()
        .collect();
    if !has_ingress && others.len() == conditions.len() {
        return None;
    }
    Some(json!({"loadBalancer": {"ingress": null}, "conditions": others}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(port: u16, error: Option<&'static str>) -> PortOutcome {
        PortOutcome {
            port,
            protocol: "TCP".into(),
            error,
        }
    }

    /// One address, port 80 served and port 53 not, with `trouble`.
    fn wanted(trouble: Option<(String, String)>) -> Wanted {
        Wanted {
            ingress: vec![(
                "192.0.2.10".parse().expect("ip"),
                vec![
                    port(80, None),
                    port(53, Some("gantry.io/UnsupportedProtocol")),
                ],
            )],
            trouble,
        }
    }

    #[test]
    fn a_written_status_is_not_written_again() {
        let wanted = wanted(None);
        let status = to_write(None, &wanted, Some(1), "2026-11-30T00:00:00Z").expect("first write");
        let ingress = &status["loadBalancer"]["ingress"][0];
        assert_eq!(ingress["ipMode"], "Proxy");
        assert_eq!(
            ingress["ports"][1]["error"],
            "gantry.io/UnsupportedProtocol"
        );
        assert!(ingress["ports"][0].get("error").is_none());
        let read_back: ServiceStatus = serde_json::from_value(status).expect("a ServiceStatus");
        assert_eq!(
            to_write(Some(&read_back), &wanted, Some(1), "2026-11-30T01:00:00Z"),
            None
        );
        // Trouble flips the condition, with a new transition time; other conditions stay.
        let mut with_other = serde_json::to_value(&read_back).expect("json");
        with_other["conditions"].as_array_mut().expect("list").push(json!({"type": "Other", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "2026-01-01T00:00:00Z"}));
        let with_other: ServiceStatus = serde_json::from_value(with_other).expect("status");
        let troubled = Wanted {
            trouble: Some(("AddressInUse".into(), "taken".into())),
            ..wanted
        };
        let status = to_write(
            Some(&with_other),
            &troubled,
            Some(2),
            "2026-11-30T02:00:00Z",
        )
        .expect("changed");
        let conditions = status["conditions"].as_array().expect("conditions");
        assert_eq!(conditions.len(), 2);
        assert_eq!(conditions[1]["status"], "False");
        assert_eq!(conditions[1]["lastTransitionTime"], "2026-11-30T02:00:00Z");
        assert_eq!(conditions[0]["type"], "Other");
    }

    #[test]
    fn what_a_written_status_says_is_read_back() {
        assert_eq!(said(None), Said::default());
        let wanted = wanted(Some(("AddressInUse".into(), "taken".into())));
        let status = to_write(None, &wanted, Some(1), "2026-11-30T00:00:00Z").expect("written");
        let read_back: ServiceStatus = serde_json::from_value(status).expect("a ServiceStatus");
        assert_eq!(
            said(Some(&read_back)),
            Said {
                trouble: wanted.trouble.clone(),
                skipped: vec![port(53, Some("gantry.io/UnsupportedProtocol"))],
            }
        );
        let well = Wanted {
            trouble: None,
            ..wanted
        };
        let status =
            to_write(Some(&read_back), &well, Some(1), "2026-11-30T00:00:01Z").expect("changed");
        let read_back: ServiceStatus = serde_json::from_value(status).expect("a ServiceStatus");
        assert_eq!(said(Some(&read_back)).trouble, None);
    }

    #[test]
    fn clearing_removes_only_gantrys_part() {
        assert_eq!(to_clear(None), None);
        let status: ServiceStatus = serde_json::from_value(json!({
            "loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]},
            "conditions": [{"type": CONDITION, "status": "True", "reason": "Provisioned", "message": "", "lastTransitionTime": "2026-11-30T00:00:00Z"},
                           {"type": "Other", "status": "True", "reason": "X", "message": "", "lastTransitionTime": "2026-11-30T00:00:00Z"}]
        })).expect("status");
        let cleared = to_clear(Some(&status)).expect("something to clear");
        assert_eq!(cleared["conditions"].as_array().expect("list").len(), 1);
        assert_eq!(cleared["loadBalancer"]["ingress"], Value::Null);
    }
}
