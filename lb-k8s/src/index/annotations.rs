//! Gantry's annotations on a Service, all under one prefix (`gantry.io/`), read into what
//! they ask for. An unknown `gantry.io/` annotation or a value that does not parse is a
//! problem named by its annotation: the Service then keeps its last good configuration.
//!
//! | annotation | value |
//! |---|---|
//! | `gantry.io/backends` | `pods` or `nodes` |
//! | `gantry.io/addresses` | the address(es) to serve on, comma-separated, one per family |
//! | `gantry.io/address-pool` | the pool to take an address from |
//! | `gantry.io/sharing-key` | Services with the same key may share an address |
//! | `gantry.io/protocol` | `tcp`, `tls`, `http` or `https`, for every TCP port |
//! | `gantry.io/protocol.PORT` | the same for one port (its name, or its number) |
//! | `gantry.io/tls-secret` | a `kubernetes.io/tls` Secret of the namespace, for `tls`/`https` ports |
//! | `gantry.io/backend-protocol` | `http1` or `h2c`, for `http`/`https` ports |
//! | `gantry.io/proxy-protocol` | `v1` or `v2`, for `tcp`/`tls` ports |
//! | `gantry.io/balancer`, `gantry.io/affinity`, `gantry.io/health` | a policy (`builtin:…` or a plugin of the file) |
//! | `gantry.io/balancer-params`, … `-params` | its parameters, a YAML or JSON map |

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::settings::BackendMode;

/// The prefix of every Gantry annotation.
pub const PREFIX: &str = "gantry.io/";

/// What a Gantry annotation asks of a port's protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortProtocol {
    /// Plain TCP.
    Tcp,
    /// TLS terminated by Gantry, TCP behind.
    Tls,
    /// HTTP.
    Http,
    /// HTTPS terminated by Gantry.
    Https,
}

impl PortProtocol {
    fn parse(text: &str) -> Option<Self> {
        match text.trim() {
            "tcp" => Some(PortProtocol::Tcp),
            "tls" => Some(PortProtocol::Tls),
            "http" => Some(PortProtocol::Http),
            "https" => Some(PortProtocol::Https),
            _ => None,
        }
    }

    /// Whether Gantry terminates TLS on it.
    pub fn terminates_tls(self) -> bool {
        matches!(self, PortProtocol::Tls | PortProtocol::Https)
    }

    /// Whether it speaks HTTP.
    pub fn is_http(self) -> bool {
        matches!(self, PortProtocol::Http | PortProtocol::Https)
    }
}

/// A policy named by an annotation, with its parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct PolicyChoice {
    /// `builtin:…` or a plugin of the file.
    pub policy: String,
    /// Its parameters.
    pub params: BTreeMap<String, serde_yaml::Value>,
}

/// What a Service's Gantry annotations ask for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Annotations {
    /// Where its traffic goes, over the appliance's default.
    pub backends: Option<BackendMode>,
    /// The addresses to serve on, at most one per family, in order.
    pub addresses: Vec<IpAddr>,
    /// The pool to take an address from.
    pub pool: Option<String>,
    /// The key of the Services it may share an address with.
    pub sharing_key: Option<String>,
    /// The protocol of every TCP port.
    pub protocol: Option<PortProtocol>,
    /// The protocol of some ports, by name or number.
    pub port_protocols: BTreeMap<String, PortProtocol>,
    /// The Secret with the certificate of `tls`/`https` ports.
    pub tls_secret: Option<String>,
    /// `http1` or `h2c`.
    pub backend_protocol: Option<String>,
    /// `v1` or `v2`.
    pub proxy_protocol: Option<String>,
    /// The balancer.
    pub balancer: Option<PolicyChoice>,
    /// The affinity.
    pub affinity: Option<PolicyChoice>,
    /// A health policy.
    pub health: Option<PolicyChoice>,
}

impl Annotations {
    /// The protocol of the port named `name` with number `number`.
    pub fn protocol_of(&self, name: &str, number: u16) -> PortProtocol {
        self.port_protocols
            .get(name)
            .or_else(|| self.port_protocols.get(&number.to_string()))
            .or(self.protocol.as_ref())
            .copied()
            .unwrap_or(PortProtocol::Tcp)
    }
}

/// Reads the Gantry annotations of `annotations`; each problem names its annotation.
pub fn read(annotations: &BTreeMap<String, String>, problems: &mut Vec<String>) -> Annotations {
    let mut out = Annotations::default();
    let mut params: BTreeMap<&str, (&str, BTreeMap<String, serde_yaml::Value>)> = BTreeMap::new();
    for (key, value) in annotations {
        let Some(name) = key.strip_prefix(PREFIX) else {
            continue;
        };
        let mut problem = |message: String| {
            problems.push(format!("metadata.annotations[{key}]: {message}"));
        };
        let value = value.trim();
        match name {
            "backends" => match value {
                "pods" => out.backends = Some(BackendMode::Pods),
                "nodes" => out.backends = Some(BackendMode::Nodes),
                _ => problem(format!("`{value}`: expected `pods` or `nodes`")),
            },
            "addresses" => {
                for text in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    match text.parse::<IpAddr>() {
                        Ok(ip) if out.addresses.iter().any(|a| a.is_ipv4() == ip.is_ipv4()) => {
                            problem(format!("`{text}`: one address per family (IPv4, IPv6)"))
                        }
                        Ok(ip) => out.addresses.push(ip),
                        Err(_) => problem(format!("`{text}` is not an IP address")),
                    }
                }
            }
            "address-pool" => out.pool = Some(value.to_owned()),
            "sharing-key" => out.sharing_key = Some(value.to_owned()),
            "protocol" => match PortProtocol::parse(value) {
                Some(p) => out.protocol = Some(p),
                None => problem(format!(
                    "`{value}`: expected `tcp`, `tls`, `http` or `https`"
                )),
            },
            "tls-secret" => out.tls_secret = Some(value.to_owned()),
            "backend-protocol" => match value {
                "http1" | "h2c" => out.backend_protocol = Some(value.to_owned()),
                _ => problem(format!("`{value}`: expected `http1` or `h2c`")),
            },
            "proxy-protocol" => match value {
                "v1" | "v2" => out.proxy_protocol = Some(value.to_owned()),
                _ => problem(format!("`{value}`: expected `v1` or `v2`")),
            },
            "balancer" | "affinity" | "health" => {
                let choice = PolicyChoice {
                    policy: value.to_owned(),
                    params: BTreeMap::new(),
                };
                match name {
                    "balancer" => out.balancer = Some(choice),
                    "affinity" => out.affinity = Some(choice),
                    _ => out.health = Some(choice),
                }
            }
            "balancer-params" | "affinity-params" | "health-params" => {
                match serde_yaml::from_str::<BTreeMap<String, serde_yaml::Value>>(value) {
                    Ok(map) => {
                        params.insert(&name[..name.len() - "-params".len()], (key, map));
                    }
                    Err(e) => problem(format!("not a map of parameters: {e}")),
                }
            }
            _ => match name.strip_prefix("protocol.") {
                Some(port) => match PortProtocol::parse(value) {
                    Some(p) => {
                        out.port_protocols.insert(port.to_owned(), p);
                    }
                    None => problem(format!(
                        "`{value}`: expected `tcp`, `tls`, `http` or `https`"
                    )),
                },
                None => problem("unknown Gantry annotation".to_owned()),
            },
        }
    }
    for (policy, (key, map)) in params {
        let target = match policy {
            "balancer" => &mut out.balancer,
            "affinity" => &mut out.affinity,
            _ => &mut out.health,
        };
        match target {
            Some(choice) => choice.params = map,
            None => problems.push(format!(
                "metadata.annotations[{key}]: parameters without `{PREFIX}{policy}`"
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_all(pairs: &[(&str, &str)]) -> (Annotations, Vec<String>) {
        let map = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut problems = Vec::new();
        let annotations = read(&map, &mut problems);
        (annotations, problems)
    }

    #[test]
    fn every_annotation_reads_into_what_it_asks_for() {
        let (a, problems) = read_all(&[
            ("gantry.io/backends", "nodes"),
            ("gantry.io/addresses", "192.0.2.7, 2001:db8::7"),
            ("gantry.io/address-pool", "edge"),
            ("gantry.io/sharing-key", "shared"),
            ("gantry.io/protocol", "http"),
            ("gantry.io/protocol.admin", "https"),
            ("gantry.io/tls-secret", "web-tls"),
            ("gantry.io/backend-protocol", "h2c"),
            ("gantry.io/balancer", "builtin:maglev"),
            ("gantry.io/balancer-params", "{table_size: 65537}"),
            ("example.com/other", "ignored"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(a.backends, Some(BackendMode::Nodes));
        assert_eq!(a.addresses.len(), 2);
        assert_eq!(
            (a.pool.as_deref(), a.sharing_key.as_deref()),
            (Some("edge"), Some("shared"))
        );
        assert_eq!(a.protocol_of("web", 80), PortProtocol::Http);
        assert_eq!(a.protocol_of("admin", 8443), PortProtocol::Https);
        assert_eq!(a.tls_secret.as_deref(), Some("web-tls"));
        let balancer = a.balancer.expect("balancer");
        assert_eq!(balancer.policy, "builtin:maglev");
        assert_eq!(
            balancer.params["table_size"],
            serde_yaml::Value::from(65537)
        );
    }

    #[test]
    fn each_bad_annotation_is_named_with_its_problem() {
        let (_, problems) = read_all(&[
            ("gantry.io/protocol", "gopher"),
            ("gantry.io/addresses", "not-an-ip"),
            ("gantry.io/affinity-params", "{a: 1}"),
            ("gantry.io/health-params", "[not, a, map]"),
            ("gantry.io/typo", "x"),
        ]);
        let joined = problems.join("\n");
        for expected in [
            "metadata.annotations[gantry.io/protocol]: `gopher`",
            "metadata.annotations[gantry.io/addresses]: `not-an-ip` is not an IP address",
            "metadata.annotations[gantry.io/affinity-params]: parameters without `gantry.io/affinity`",
            "metadata.annotations[gantry.io/health-params]: not a map of parameters",
            "metadata.annotations[gantry.io/typo]: unknown Gantry annotation",
        ] {
            assert!(joined.contains(expected), "missing `{expected}` in:\n{joined}");
        }
        assert_eq!(problems.len(), 5);
    }
}
