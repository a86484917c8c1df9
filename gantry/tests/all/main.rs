//! Integration tests: Gantry in-process (and the `gantry` binary) against real origins and
//! clients on loopback, with ephemeral ports and generated certificates.

#![allow(unreachable_pub, missing_docs)]

mod abuse;
mod admin;
mod affinity;
mod appliance;
mod binary;
mod dashboard;
mod deploy;
mod explain;
mod fuzz_corpus;
mod h2_abuse;
mod h2_proxy;
mod health;
mod http_proxy;
mod keep_alive_drain;
mod kubernetes;
mod kubernetes_backends;
mod kubernetes_netns;
mod kubernetes_policies;
mod limits;
mod parity;
mod policies;
mod prometheus_rules;
mod refused_reload;
mod relay;
mod relay_timeouts;
mod reload;
mod routing;
mod routing_ha;
mod routing_l2;
mod sandbox;
mod shadow;
mod source_ranges;
mod support;
mod tcp_proxy;
mod tls;
mod udp;
mod udp_handoff;
mod upgrade;
mod upgrade_udp;
