//! The typed difference between the running model and a new one. The runtime applies exactly
//! these changes, so a reload that touches one port leaves every other socket, pool and
//! connection alone; each change kind is also counted in metrics.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;

use crate::model::{ListenerKey, Model, Port};

/// One difference between two models.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A new port: bind it.
    ListenerAdded(ListenerKey),
    /// A port is gone: stop accepting, drain its connections.
    ListenerRemoved(ListenerKey),
    /// A port moved to another address: drain the old socket, bind the new one.
    ListenerRebound {
        /// The port.
        key: ListenerKey,
        /// Old bind address.
        from: SocketAddr,
        /// New bind address.
        to: SocketAddr,
    },
    /// The port's backend set (addresses or weights) changed: swap it.
    BackendsChanged(ListenerKey),
    /// The port's certificates changed (files or names): swap the SNI table.
    CertificatesChanged(ListenerKey),
    /// Protocol, timeouts, limits or retry policy changed: swap what new connections use.
    ListenerSettingsChanged(ListenerKey),
    /// The balancing, affinity or health policy, its parameters, or its plugin file changed:
    /// load it, swap it.
    BalancerChanged(ListenerKey),
    /// The admin listener moved.
    AdminChanged {
        /// Old address.
        from: SocketAddr,
        /// New address.
        to: SocketAddr,
    },
    /// Process-wide settings changed (worker count takes effect at the next start).
    RuntimeChanged,
}

impl Change {
    /// Short name of the change kind, the `kind` label of `gantry_config_changes_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::ListenerAdded(_) => "listener_added",
            Change::ListenerRemoved(_) => "listener_removed",
            Change::ListenerRebound { .. } => "listener_rebound",
            Change::BackendsChanged(_) => "backends_changed",
            Change::CertificatesChanged(_) => "certificates_changed",
            Change::ListenerSettingsChanged(_) => "listener_settings_changed",
            Change::BalancerChanged(_) => "balancer_changed",
            Change::AdminChanged { .. } => "admin_changed",
            Change::RuntimeChanged => "runtime_changed",
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::ListenerAdded(k)
            | Change::ListenerRemoved(k)
            | Change::BackendsChanged(k)
            | Change::CertificatesChanged(k)
            | Change::ListenerSettingsChanged(k)
            | Change::BalancerChanged(k) => write!(f, "{} {k}", self.kind()),
            Change::ListenerRebound { key, from, to } => {
                write!(f, "{} {key} {from} -> {to}", self.kind())
            }
            Change::AdminChanged { from, to } => write!(f, "{} {from} -> {to}", self.kind()),
            Change::RuntimeChanged => f.write_str(self.kind()),
        }
    }
}

/// Every change from `old` to `new`, listeners in key order; empty when nothing changed.
pub fn diff(old: &Model, new: &Model) -> Vec<Change> {
    let mut changes = Vec::new();
    if old.admin.listen != new.admin.listen {
        changes.push(Change::AdminChanged {
            from: old.admin.listen,
            to: new.admin.listen,
        });
    }
    if old.runtime != new.runtime || old.plugin_limits != new.plugin_limits {
        changes.push(Change::RuntimeChanged);
    }
    let keys: BTreeSet<&ListenerKey> = old.ports().chain(new.ports()).map(|p| &p.key).collect();
    for key in keys {
        match (old.port(key), new.port(key)) {
            (Some(_), None) => changes.push(Change::ListenerRemoved(key.clone())),
            (None, Some(_)) => changes.push(Change::ListenerAdded(key.clone())),
            (Some(before), Some(after)) => port_changes(before, after, &mut changes),
            (None, None) => {}
        }
    }
    changes
}

fn port_changes(before: &Port, after: &Port, out: &mut Vec<Change>) {
    let key = &after.key;
    if before.bind != after.bind {
        // A rebound port is rebuilt whole; listing its other changes would say nothing more.
        out.push(Change::ListenerRebound {
            key: key.clone(),
            from: before.bind,
            to: after.bind,
        });
        return;
    }
    if before.protocol != after.protocol
        || before.proxy_protocol != after.proxy_protocol
        || before.backend_protocol != after.backend_protocol
        || before.settings != after.settings
    {
        out.push(Change::ListenerSettingsChanged(key.clone()));
    }
    if before.tls != after.tls {
        out.push(Change::CertificatesChanged(key.clone()));
    }
    if before.balancer != after.balancer
        || before.affinity != after.affinity
        || before.health != after.health
    {
        out.push(Change::BalancerChanged(key.clone()));
    }
    if before.backends != after.backends {
        out.push(Change::BackendsChanged(key.clone()));
    }
}
