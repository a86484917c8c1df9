//! Conflicts between services, whatever source each came from: a service name used twice, and
//! two ports (or a port and the admin listener) on one address. A clash between sources is
//! reported like any other, with both origins; neither silently wins.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::model::{Admin, Service};
use crate::problems::{FieldPath, Problems};

/// The services whose names were not taken by an earlier one; the others are reported.
pub(super) fn without_duplicate_names(
    services: Vec<(FieldPath, Service)>,
    p: &mut Problems,
) -> Vec<(FieldPath, Service)> {
    let mut first_seen: HashMap<String, FieldPath> = HashMap::new();
    let mut kept = Vec::with_capacity(services.len());
    for (origin, service) in services {
        if let Some(first) = first_seen.get(&service.name) {
            p.push(
                &origin.field("name"),
                format!("duplicate service name `{}` (also {first})", service.name),
            );
            continue;
        }
        first_seen.insert(service.name.clone(), origin.clone());
        kept.push((origin, service));
    }
    kept
}

/// Two ports cannot listen on the same address and port, and a wildcard address (`0.0.0.0`,
/// `::`) takes the port on every address. Port 0 (any free port) never conflicts.
pub(super) fn check_binds(admin: &Admin, services: &[(FieldPath, Service)], p: &mut Problems) {
    let mut taken: Vec<(SocketAddr, String)> = vec![(admin.listen, "admin.listen".into())];
    for (origin, service) in services {
        for port in service.ports.values() {
            if port.bind.port() == 0 {
                continue;
            }
            let here = format!("{origin} port `{}`", port.key.port);
            if let Some((_, other)) = taken.iter().find(|(addr, _)| overlaps(*addr, port.bind)) {
                p.push(
                    &origin.field("ports"),
                    format!("{} ({here}) is already used by {other}", port.bind),
                );
            } else {
                taken.push((port.bind, here));
            }
        }
    }
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}
