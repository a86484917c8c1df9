//! Conflicts between services, whatever source each came from: a service name used twice, and
//! two ports (or a port and the admin listener) on one address and transport (TCP and UDP
//! may share a port number). A clash between sources is
//! reported like any other, with both origins; neither silently wins: the one added first
//! keeps its name and ports, the later one is reported.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::model::{Admin, Service};
use crate::problems::{FieldPath, Problems};

/// What the services added so far hold: their names, and the addresses and ports they bind,
/// indexed so that a lookup, a claim and a release each cost the same with ten services or
/// ten thousand on one port number.
#[derive(Clone)]
pub(super) struct Taken {
    names: HashMap<String, FieldPath>,
    /// By port number and whether it is UDP.
    binds: HashMap<(u16, bool), Holders>,
}

/// Who binds one port number over one transport.
#[derive(Clone, Default)]
struct Holders {
    /// Those bound to one address, by it.
    by_address: HashMap<IpAddr, Holder>,
    /// Those bound to every address (`0.0.0.0`, `::`): they overlap with all.
    everywhere: Vec<Holder>,
}

/// One bound address and port, and who binds it.
#[derive(Clone)]
struct Holder {
    /// The service's origin (`None`: the admin listener).
    origin: Option<FieldPath>,
    /// As clashes name it: `Service default/web port `http``, `admin.listen`.
    label: String,
}

impl Holders {
    /// Who binds an address overlapping `ip`.
    fn overlapping(&self, ip: IpAddr) -> Option<&Holder> {
        if ip.is_unspecified() {
            self.everywhere
                .first()
                .or_else(|| self.by_address.values().next())
        } else {
            self.by_address.get(&ip).or_else(|| self.everywhere.first())
        }
    }
}

impl Taken {
    /// Nothing but the admin listener.
    pub(super) fn new(admin: &Admin) -> Self {
        let mut taken = Taken {
            names: HashMap::new(),
            binds: HashMap::new(),
        };
        taken.bind(
            admin.listen,
            false,
            Holder {
                origin: None,
                label: "admin.listen".into(),
            },
        );
        taken
    }

    fn bind(&mut self, addr: SocketAddr, udp: bool, holder: Holder) {
        let holders = self.binds.entry((addr.port(), udp)).or_default();
        if addr.ip().is_unspecified() {
            holders.everywhere.push(holder);
        } else {
            holders.by_address.insert(addr.ip(), holder);
        }
    }

    /// Who holds an address and port overlapping `addr` over the same transport. Port 0 (any
    /// free port) never clashes.
    fn holder(&self, addr: SocketAddr, udp: bool) -> Option<&str> {
        if addr.port() == 0 {
            return None;
        }
        self.binds
            .get(&(addr.port(), udp))?
            .overlapping(addr.ip())
            .map(|holder| holder.label.as_str())
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
                None => self.bind(
                    port.bind,
                    port.protocol.is_udp(),
                    Holder {
                        origin: Some(origin.clone()),
                        label: here,
                    },
                ),
            }
        }
        true
    }

    /// Gives back what `service`, claimed under `origin`, holds: its name and its binds.
    pub(super) fn release(&mut self, origin: &FieldPath, service: &Service) {
        if self.names.get(&service.name) == Some(origin) {
            self.names.remove(&service.name);
        }
        let ours = |holder: &Holder| holder.origin.as_ref() == Some(origin);
        for port in service.ports.values() {
            let key = (port.bind.port(), port.protocol.is_udp());
            let Some(holders) = self.binds.get_mut(&key) else {
                continue;
            };
            if port.bind.ip().is_unspecified() {
                holders.everywhere.retain(|holder| !ours(holder));
            } else if holders.by_address.get(&port.bind.ip()).is_some_and(ours) {
                holders.by_address.remove(&port.bind.ip());
            }
            if holders.by_address.is_empty() && holders.everywhere.is_empty() {
                self.binds.remove(&key);
            }
        }
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
