//! The entry point of the `kubernetes_service` fuzz target (`fuzz/`, libFuzzer) and of the
//! test that replays its corpus: a Service object (JSON, as the API server sends it) through
//! the index and translation (annotations, ports, policies) gives an answer, never a panic.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A Service object from `data` (JSON) indexed and translated as the Kubernetes source does,
/// with an address allocated.
pub fn kubernetes_service(data: &[u8]) {
    let Ok(service) = serde_json::from_slice::<k8s_openapi::api::core::v1::Service>(data) else {
        return;
    };
    let mut index = crate::Index::new(crate::Settings::default());
    let Some(key) = index.apply_service(&service) else {
        return;
    };
    for allocated in [
        None,
        Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10))),
        Some(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 10))),
    ] {
        let _ = index.translate(&key, allocated);
    }
}
