//! The typed difference between the running model and a new one, precise enough to act on: the
//! runtime's apply is a `match` over these changes and compares no fields of its own, so a
//! reload that touches one port leaves every other socket, pool and connection alone. Each
//! change kind is also counted in metrics (its [`Change::kind`]).

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
    /// A port moved to another address: drain the old socket, bind the new one (the port is
    /// rebuilt whole, so its other changes are not listed).
    ListenerRebound {
        /// The port.
        key: ListenerKey,
        /// Old bind address.
        from: SocketAddr,
        /// New bind address.
        to: SocketAddr,
    },
    /// A kept port changed in these aspects: rebuild what they touch, keep the rest.
    PortChanged {
        /// The port.
        key: ListenerKey,
        /// What changed (never empty).
        what: PortAspects,
    },
    /// The admin listener moved.
    AdminChanged {
        /// Old address.
        from: SocketAddr,
        /// New address.
        to: SocketAddr,
    },
    /// The admin token changed (or was set, or removed), or `admin.open`: it applies to the
    /// next request.
    AdminTokenChanged,
    /// Process-wide settings changed.
    RuntimeChanged(RuntimeAspects),
    /// The sandbox limits of plugins changed (deadlines and quarantine apply at once; the
    /// memory cap at the next start).
    PluginLimitsChanged,
    /// The `kubernetes:` section changed (or appeared, or went): the Kubernetes source
    /// restarts with it.
    KubernetesChanged,
    /// The `routing:` section changed (or appeared, or went): the announcer restarts with it.
    RoutingChanged,
    /// Only where a service came from changed (a newer version of its Kubernetes object that
    /// asks for nothing different): nothing to rebuild, the model is kept.
    SourceChanged(String),
}

impl Change {
    /// Short name of the change kind, the `kind` label of `gantry_config_changes_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            Change::ListenerAdded(_) => "listener_added",
            Change::ListenerRemoved(_) => "listener_removed",
            Change::ListenerRebound { .. } => "listener_rebound",
            Change::PortChanged { .. } => "port_changed",
            Change::AdminChanged { .. } => "admin_changed",
            Change::AdminTokenChanged => "admin_token_changed",
            Change::RuntimeChanged(_) => "runtime_changed",
            Change::PluginLimitsChanged => "plugin_limits_changed",
            Change::KubernetesChanged => "kubernetes_changed",
            Change::RoutingChanged => "routing_changed",
            Change::SourceChanged(_) => "source_changed",
        }
    }
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Change::ListenerAdded(k) | Change::ListenerRemoved(k) => {
                write!(f, "{} {k}", self.kind())
            }
            Change::ListenerRebound { key, from, to } => {
                write!(f, "{} {key} {from} -> {to}", self.kind())
            }
            Change::PortChanged { key, what } => write!(f, "{} {key} ({what})", self.kind()),
            Change::AdminChanged { from, to } => write!(f, "{} {from} -> {to}", self.kind()),
            Change::RuntimeChanged(what) => write!(f, "{} ({what})", self.kind()),
            Change::PluginLimitsChanged
            | Change::KubernetesChanged
            | Change::RoutingChanged
            | Change::AdminTokenChanged => f.write_str(self.kind()),
            Change::SourceChanged(service) => write!(f, "{} {service}", self.kind()),
        }
    }
}

/// A small set of aspects, one bit each.
macro_rules! aspect_set {
    (
        $(#[$doc:meta])* $set:ident, $aspect:ident {
            $($(#[$vdoc:meta])* $variant:ident = $label:literal,)*
        }
    ) => {
        /// One aspect of what changed.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum $aspect {
            $($(#[$vdoc])* $variant,)*
        }

        impl $aspect {
            /// Every aspect, in order.
            pub const ALL: &'static [$aspect] = &[$($aspect::$variant,)*];

            /// The aspect's name, as shown in logs.
            pub fn label(self) -> &'static str {
                match self {
                    $($aspect::$variant => $label,)*
                }
            }
        }

        $(#[$doc])*
        #[derive(Clone, Copy, Default, PartialEq, Eq)]
        pub struct $set(u16);

        impl $set {
            /// No aspect.
            pub const fn empty() -> Self {
                $set(0)
            }

            /// Exactly these aspects.
            pub fn of(aspects: &[$aspect]) -> Self {
                let mut set = Self::empty();
                for aspect in aspects {
                    set.insert(*aspect);
                }
                set
            }

            /// Adds `aspect`.
            pub fn insert(&mut self, aspect: $aspect) {
                self.0 |= 1 << aspect as u8;
            }

            /// Adds `aspect` when `changed`.
            pub fn insert_if(&mut self, aspect: $aspect, changed: bool) {
                if changed {
                    self.insert(aspect);
                }
            }

            /// Whether `aspect` is in the set.
            pub fn contains(self, aspect: $aspect) -> bool {
                self.0 & (1 << aspect as u8) != 0
            }

            /// Whether the set holds nothing.
            pub fn is_empty(self) -> bool {
                self.0 == 0
            }

            /// The aspects in the set, in order.
            pub fn iter(self) -> impl Iterator<Item = $aspect> {
                $aspect::ALL.iter().copied().filter(move |a| self.contains(*a))
            }
        }

        impl fmt::Display for $set {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                for (i, aspect) in self.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    f.write_str(aspect.label())?;
                }
                Ok(())
            }
        }

        impl fmt::Debug for $set {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.debug_set().entries(self.iter()).finish()
            }
        }
    };
}

aspect_set! {
    /// What changed about a kept port, each aspect naming what the runtime must rebuild.
    PortAspects, PortAspect {
        /// Backend addresses or weights: a new pool and balancer for the set.
        Backends = "backends",
        /// Certificates (names or material): a new SNI table.
        Certificates = "certificates",
        /// What is spoken: protocol, PROXY header, backend HTTP version.
        Protocol = "protocol",
        /// Connection and header limits.
        Limits = "limits",
        /// Timeouts, retries, back-off, trusted proxies and source ranges: new connections
        /// use them.
        Settings = "settings",
        /// The balancing policy or its parameters.
        Balancer = "balancer",
        /// The session-affinity policy or its parameters (a new table).
        Affinity = "affinity",
        /// The health policies or their parameters (fresh verdicts).
        Health = "health",
        /// A shadow policy, its parameters or its sampling (fresh shadows; what serves is
        /// kept, affinity table included).
        Shadow = "shadow",
    }
}

aspect_set! {
    /// What changed in `runtime:`.
    RuntimeAspects, RuntimeAspect {
        /// `workers`: read at start only.
        Workers = "workers",
        /// `shutdown_grace`.
        ShutdownGrace = "shutdown_grace",
        /// `watch_interval`.
        WatchInterval = "watch_interval",
        /// `access_log`: switched at once everywhere.
        AccessLog = "access_log",
        /// `plugin_cache`: read at start only.
        PluginCache = "plugin_cache",
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
    if old.admin.token != new.admin.token || old.admin.open != new.admin.open {
        changes.push(Change::AdminTokenChanged);
    }
    let (a, b) = (&old.runtime, &new.runtime);
    let mut runtime = RuntimeAspects::empty();
    runtime.insert_if(RuntimeAspect::Workers, a.workers != b.workers);
    runtime.insert_if(
        RuntimeAspect::ShutdownGrace,
        a.shutdown_grace != b.shutdown_grace,
    );
    runtime.insert_if(
        RuntimeAspect::WatchInterval,
        a.watch_interval != b.watch_interval,
    );
    runtime.insert_if(RuntimeAspect::AccessLog, a.access_log != b.access_log);
    runtime.insert_if(RuntimeAspect::PluginCache, a.plugin_cache != b.plugin_cache);
    if !runtime.is_empty() {
        changes.push(Change::RuntimeChanged(runtime));
    }
    if old.plugin_limits != new.plugin_limits {
        changes.push(Change::PluginLimitsChanged);
    }
    if old.kubernetes != new.kubernetes {
        changes.push(Change::KubernetesChanged);
    }
    if old.routing != new.routing {
        changes.push(Change::RoutingChanged);
    }
    let names: BTreeSet<&str> = old
        .services
        .keys()
        .chain(new.services.keys())
        .map(String::as_str)
        .collect();
    changes.extend(diff_services(old, new, names));
    changes
}

/// The changes to the services named, whose listeners in key order; the others are taken to
/// be the same in both models. A source that changed a few services of a large model diffs
/// those, at their cost; [`diff`] names every service.
pub fn diff_services<'a>(
    old: &Model,
    new: &Model,
    names: impl IntoIterator<Item = &'a str>,
) -> Vec<Change> {
    let mut changes = Vec::new();
    let mut keys: BTreeSet<&ListenerKey> = BTreeSet::new();
    for name in names {
        let (before, after) = (old.services.get(name), new.services.get(name));
        if let (Some(a), Some(b)) = (before, after) {
            // The same `Arc` (a source rebuilt the model around it) cannot have changed.
            if std::sync::Arc::ptr_eq(a, b) {
                continue;
            }
            if a.source != b.source {
                changes.push(Change::SourceChanged(name.to_owned()));
            }
        }
        keys.extend(
            before
                .into_iter()
                .chain(after)
                .flat_map(|service| service.ports.values().map(|port| &port.key)),
        );
    }
    for key in keys {
        match (old.port(key), new.port(key)) {
            (Some(_), None) => changes.push(Change::ListenerRemoved(key.clone())),
            (None, Some(_)) => changes.push(Change::ListenerAdded(key.clone())),
            (Some(before), Some(after)) => changes.extend(port_change(before, after)),
            (None, None) => {}
        }
    }
    changes
}

fn port_change(before: &Port, after: &Port) -> Option<Change> {
    let key = after.key.clone();
    // A move between TCP and UDP needs a socket of the other kind: the port is rebuilt whole.
    if before.bind != after.bind || before.protocol.is_udp() != after.protocol.is_udp() {
        return Some(Change::ListenerRebound {
            key,
            from: before.bind,
            to: after.bind,
        });
    }
    let (s, t) = (&before.settings, &after.settings);
    let mut what = PortAspects::empty();
    what.insert_if(PortAspect::Backends, before.backends != after.backends);
    what.insert_if(PortAspect::Certificates, before.tls != after.tls);
    what.insert_if(
        PortAspect::Protocol,
        before.protocol != after.protocol
            || before.proxy_protocol != after.proxy_protocol
            || before.backend_protocol != after.backend_protocol,
    );
    what.insert_if(PortAspect::Limits, s.limits != t.limits);
    what.insert_if(
        PortAspect::Settings,
        s.timeouts != t.timeouts
            || s.retries != t.retries
            || s.backoff != t.backoff
            || s.trusted_proxies != t.trusted_proxies
            || s.source_ranges != t.source_ranges,
    );
    what.insert_if(PortAspect::Balancer, before.balancer != after.balancer);
    what.insert_if(PortAspect::Affinity, before.affinity != after.affinity);
    what.insert_if(PortAspect::Health, before.health != after.health);
    what.insert_if(PortAspect::Shadow, before.shadow != after.shadow);
    (!what.is_empty()).then_some(Change::PortChanged { key, what })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aspect_sets_hold_and_print_their_members_in_order() {
        let set = PortAspects::of(&[PortAspect::Health, PortAspect::Backends]);
        assert!(set.contains(PortAspect::Backends));
        assert!(!set.contains(PortAspect::Balancer));
        assert_eq!(set.to_string(), "backends, health");
        assert!(PortAspects::empty().is_empty());
    }
}
