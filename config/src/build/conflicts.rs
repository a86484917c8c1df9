//! Conflicts between services, whatever source each came from: a service name used twice, and
//! two ports (or a port and the admin listener) on one address and transport (TCP and UDP
//! may share a port number). A clash between sources is
//! reported like any other, with both origins; neither silently wins: the one added first
//! keeps its name and ports, the later one is reported.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::model::{Admin, Service};
use crate::problems::{FieldPath, Problems};

/// What the services added so far hold: their names, and the addresses and ports they bind
/// (by port number, so a lookup is cheap with thousands of services).
pub(super) struct Taken {
    names: HashMap<String, FieldPath>,
    /// By port number and whether it is UDP.
    binds: HashMap<(u16, bool), Vec<(SocketAddr, String)>>,
}

impl Taken {
    /// Nothing but the admin listener.
    pub(super) fn new(admin: &Admin) -> Self {
        let mut taken = Taken {
            names: HashMap::new(),
            binds: HashMap::new(),
        };
        taken.bind(admin.listen, false, "admin.listen".into());
        taken
    }

    fn bind(&mut self, addr: SocketAddr, udp: bool, by: String) {
        self.binds
            .entry((addr.port(), udp))
            .or_default()
            .push((addr, by));
    }

    /// Who holds an address and port overlapping `addr` over the same transport. Port 0 (any
    /// free port) never clashes.
    fn holder(&self, addr: SocketAddr, udp: bool) -> Option<&str> {
        if addr.port() == 0 {
            return None;
        }
        self.binds
            .get(&(addr.port(), udp))?
            .iter()
            .find(|(held, _)| {
                held.ip() == addr.ip() || held.ip().is_unspecified() || addr.ip().is_unspecified()
            })
            .map(|(_, by)| by.as_str())
    }

    /// Everything of `service` that clashes with what is held, under `origin`.
    pub(super) fn clashes(&self, origin: &FieldPath, service: &Service) -> Problems {
        let mut p = Problems::default();
        if let Some(first) = self.names.get(&service.name) {
            p.push(
                &origin.field("name"),
                format!("duplicate service name `{}` (also {first})", service.name),
            );
        }
        for port in service.ports.values() {
            if let Some(other) = self.holder(port.bind, port.protocol.is_udp()) {
                p.push(
                    &origin.field("ports"),
                    format!(
                        "{} ({origin} port `{}`) is already used by {other}",
                        port.bind, port.key.port
                    ),
                );
            }
        }
        p
    }

    /// Takes `service`'s name and every address and port of it that is still free; reports
    /// the rest. Returns whether its name was free.
    pub(super) fn claim(
        &mut self,
        origin: &FieldPath,
        service: &Service,
        p: &mut Problems,
    ) -> bool {
        if let Some(first) = self.names.get(&service.name) {
            p.push(
                &origin.field("name"),
                format!("duplicate service name `{}` (also {first})", service.name),
            );
            return false;
        }
        self.names.insert(service.name.clone(), origin.clone());
        for port in service.ports.values() {
            let here = format!("{origin} port `{}`", port.key.port);
            match self.holder(port.bind, port.protocol.is_udp()) {
                Some(other) => p.push(
                    &origin.field("ports"),
                    format!("{} ({here}) is already used by {other}", port.bind),
                ),
                None if port.bind.port() == 0 => {}
                None => self.bind(port.bind, port.protocol.is_udp(), here),
            }
        }
        true
    }
}

/// The services whose names were not taken by an earlier one; every clash is reported.
pub(super) fn check_services(
    admin: &Admin,
    services: Vec<(FieldPath, Arc<Service>)>,
    p: &mut Problems,
) -> Vec<(FieldPath, Arc<Service>)> {
    let mut taken = Taken::new(admin);
    services
        .into_iter()
        .filter(|(origin, service)| taken.claim(origin, service, p))
        .collect()
}
