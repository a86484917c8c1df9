//! Which route serves a request: every HTTP listener shares one pingora app, so a request
//! finds its listener's route by the address its client connected to. A listener registers
//! its bound address when it starts and leaves when its last connection has drained.
//! Listening addresses never overlap (validation refuses it), so the lookup is unambiguous:
//! the exact address, else the wildcard address of its port (`0.0.0.0:80`, `[::]:80`).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::route::{Route, RouteCell};

/// The route of each HTTP listener, by the address it is bound to.
#[derive(Default)]
pub struct ListenerRoutes {
    by_address: ArcSwap<HashMap<SocketAddr, RouteCell>>,
}

impl ListenerRoutes {
    /// Connections to `address` are served with `route` from now on.
    pub fn register(&self, address: SocketAddr, route: RouteCell) {
        self.by_address.rcu(|current| {
            let mut next = HashMap::clone(current);
            next.insert(address, route.clone());
            next
        });
    }

    /// `address` is no longer served with `route` (another listener that took the address
    /// since keeps it).
    pub fn unregister(&self, address: SocketAddr, route: &RouteCell) {
        self.by_address.rcu(|current| {
            let mut next = HashMap::clone(current);
            if next.get(&address).is_some_and(|r| Arc::ptr_eq(r, route)) {
                next.remove(&address);
            }
            next
        });
    }

    /// The current route for a connection to `local`.
    pub fn find(&self, local: SocketAddr) -> Option<Arc<Route>> {
        let by_address = self.by_address.load();
        let port = local.port();
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
