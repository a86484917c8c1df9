//! Which route serves a request: every HTTP listener shares one pingora app, so a request
//! finds its listener's route by the address its client connected to. A listener registers
//! its bound address when it starts and leaves when its last connection has drained.
//! Listening addresses never overlap (validation refuses it), so the lookup is unambiguous:
//! the exact address, else the wildcard address of its port (`0.0.0.0:80`, `[::]:80`).
//!
//! Requests only read (one atomic load and a hash lookup); a change copies the map it touches.
//! The table is sharded by port so that starting ten thousand listeners copies small maps, not
//! one that grows with every listener.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::route::{Route, RouteCell};

/// Shards of the table; an address and its port's wildcard are in the same shard.
const SHARDS: usize = 64;

type Table = HashMap<SocketAddr, RouteCell>;

/// The route of each HTTP listener, by the address it is bound to.
pub struct ListenerRoutes {
    shards: Box<[ArcSwap<Table>]>,
}

impl Default for ListenerRoutes {
    fn default() -> Self {
        ListenerRoutes {
            shards: (0..SHARDS).map(|_| ArcSwap::default()).collect(),
        }
    }
}

impl ListenerRoutes {
    fn shard(&self, port: u16) -> &ArcSwap<Table> {
        &self.shards[usize::from(port) % SHARDS]
    }

    /// Connections to `address` are served with `route` from now on.
    pub fn register(&self, address: SocketAddr, route: RouteCell) {
        self.shard(address.port()).rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(address, route.clone());
            next
        });
    }

    /// `address` is no longer served with `route` (another listener that took the address
    /// since keeps it).
    pub fn unregister(&self, address: SocketAddr, route: &RouteCell) {
        self.shard(address.port()).rcu(|current| {
            let mut next = HashMap::clone(current);
            if next.get(&address).is_some_and(|r| Arc::ptr_eq(r, route)) {
                next.remove(&address);
            }
            next
        });
    }

    /// The current route for a connection to `local`.
    pub fn find(&self, local: SocketAddr) -> Option<Arc<Route>> {
        let port = local.port();
        let by_address = self.shard(port).load();
        let cell = by_address.get(&local).or_else(|| match local.ip() {
            IpAddr::V4(_) => by_address
                .get(&SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port))
                .or_else(|| by_address.get(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))),
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .and_then(|v4| by_address.get(&SocketAddr::new(v4.into(), port)))
                .or_else(|| by_address.get(&SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), port))),
        })?;
        Some(cell.load_full())
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    /// A route for port `name` (what it serves is irrelevant here: cells are compared).
    fn cell(name: &str) -> RouteCell {
        let yaml = format!("services:\n  - name: s\n    ports: [{{ name: {name}, port: 0 }}]\n");
        let model = lb_config::parse_str(&yaml, std::path::Path::new("/")).expect("model");
        let port = model.ports().next().expect("port");
        let route = Route::standalone(port).expect("route");
        Arc::new(ArcSwap::from_pointee(route))
    }

    fn port_name(routes: &ListenerRoutes, local: &str) -> Option<String> {
        let local: SocketAddr = local.parse().expect("addr");
        routes.find(local).map(|route| route.port.key.port.clone())
    }

    #[test]
    fn a_connection_finds_its_exact_address_then_its_ports_wildcard() {
        let routes = ListenerRoutes::default();
        routes.register("192.0.2.1:80".parse().expect("addr"), cell("exact"));
        routes.register("0.0.0.0:80".parse().expect("addr"), cell("any-v4"));
        routes.register("[::]:443".parse().expect("addr"), cell("any-v6"));
        assert_eq!(port_name(&routes, "192.0.2.1:80").as_deref(), Some("exact"));
        assert_eq!(
            port_name(&routes, "192.0.2.9:80").as_deref(),
            Some("any-v4")
        );
        assert_eq!(
            port_name(&routes, "192.0.2.9:443").as_deref(),
            Some("any-v6")
        );
        assert_eq!(
            port_name(&routes, "[::ffff:192.0.2.9]:443").as_deref(),
            Some("any-v6")
        );
        assert_eq!(port_name(&routes, "192.0.2.1:8080"), None);
    }

    #[test]
    fn a_listener_leaving_never_removes_a_newer_one_at_its_address() {
        let routes = ListenerRoutes::default();
        let address: SocketAddr = "192.0.2.1:80".parse().expect("addr");
        let (old, new) = (cell("old"), cell("new"));
        routes.register(address, old.clone());
        routes.register(address, new.clone());
        routes.unregister(address, &old);
        assert_eq!(port_name(&routes, "192.0.2.1:80").as_deref(), Some("new"));
        routes.unregister(address, &new);
        assert_eq!(port_name(&routes, "192.0.2.1:80"), None);
    }
}
