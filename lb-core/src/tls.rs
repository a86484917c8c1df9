//! TLS termination with rustls. Each TLS listener owns one [`TlsEndpoint`] for its whole life: an
//! SNI resolver whose certificate table is swapped whole when certificates change, a session
//! cache and a ticket key. New handshakes see a new certificate at once; open connections keep
//! theirs; session resumption survives certificate rotation because cache and tickets stay.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use arc_swap::ArcSwap;
use lb_config::TlsSettings;
use pingora::listeners::tls::Acceptor;
use rustls::server::ProducesTickets;
use rustls::server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

/// Session IDs remembered per listener for TLS 1.2 resumption (and 1.3 without tickets).
const SESSION_CACHE_ENTRIES: usize = 16 * 1024;

/// Server names to certificates, built once per certificate change.
#[derive(Default)]
struct CertTable {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the part after `*.`: `*.example.com` is stored as `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl CertTable {
    fn build(settings: &TlsSettings) -> Self {
        let mut table = CertTable::default();
        // The first certificate naming a server wins, as the file lists them.
        for cert in &settings.certificates {
            for name in &cert.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut table.wildcard, parent),
                    None => (&mut table.exact, name.as_str()),
                };
                map.entry(key.to_owned())
                    .or_insert_with(|| cert.certified_key.clone());
            }
        }
        table.default = settings
            .certificates
            .first()
            .map(|c| c.certified_key.clone());
        table
    }

    fn lookup(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(found) = self.exact.get(&name) {
            return Some(found.clone());
        }
        // A wildcard covers exactly one label: `*.example.com` matches `a.example.com` only.
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(found) = self.wildcard.get(parent) {
                return Some(found.clone());
            }
        }
        self.default.clone()
    }
}

/// Chooses the certificate by SNI from a table that can be replaced while serving.
pub struct SniResolver {
    table: ArcSwap<CertTable>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver").finish_non_exhaustive()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.table.load().lookup(client_hello.server_name())
    }
}

/// What to offer in ALPN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alpn {
    /// `h2`, `http/1.1`: an HTTPS port.
    Http,
    /// Nothing: a TLS-terminated TCP port carries whatever the backend speaks.
    None,
}

/// The long-lived TLS state of one listener.
pub struct TlsEndpoint {
    resolver: Arc<SniResolver>,
    sessions: Arc<ServerSessionMemoryCache>,
    ticketer: Arc<dyn ProducesTickets>,
}

impl TlsEndpoint {
    /// A new endpoint serving `settings`.
    pub fn new(settings: &TlsSettings) -> Result<Self, rustls::Error> {
        Ok(TlsEndpoint {
            resolver: Arc::new(SniResolver {
                table: ArcSwap::from_pointee(CertTable::build(settings)),
            }),
            sessions: ServerSessionMemoryCache::new(SESSION_CACHE_ENTRIES),
            // Ticket keys rotate on their own (every 6 hours) and live as long as the listener.
            ticketer: rustls::crypto::ring::Ticketer::new()?,
        })
    }

    /// Serves `settings` from the next handshake on.
    pub fn replace_certificates(&self, settings: &TlsSettings) {
        self.resolver
            .table
            .store(Arc::new(CertTable::build(settings)));
    }

    /// An acceptor sharing this endpoint's certificates, session cache and ticket key.
    pub fn acceptor(&self, alpn: Alpn) -> Result<Acceptor, rustls::Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(self.resolver.clone());
        config.session_storage = self.sessions.clone();
        config.ticketer = self.ticketer.clone();
        config.alpn_protocols = match alpn {
            Alpn::Http => vec![b"h2".to_vec(), b"http/1.1".to_vec()],
            Alpn::None => Vec::new(),
        };
        Ok(Acceptor::from_server_config(Arc::new(config)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(names: &[&[&str]]) -> TlsSettings {
        let yaml_certs: Vec<_> = names
            .iter()
            .map(|n| n.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .collect();
        crate::test_certs::tls_settings(&yaml_certs)
    }

    fn which(table: &CertTable, settings: &TlsSettings, name: Option<&str>) -> Option<usize> {
        let found = table.lookup(name)?;
        settings
            .certificates
            .iter()
            .position(|c| Arc::ptr_eq(&c.certified_key, &found))
    }

    #[test]
    fn exact_then_wildcard_then_default() {
        let s = settings(&[&["default.test"], &["a.test"], &["*.b.test"]]);
        let table = CertTable::build(&s);
        assert_eq!(which(&table, &s, Some("a.test")), Some(1));
        assert_eq!(which(&table, &s, Some("A.Test.")), Some(1));
        assert_eq!(which(&table, &s, Some("x.b.test")), Some(2));
        assert_eq!(
            which(&table, &s, Some("y.x.b.test")),
            Some(0),
            "one label only"
        );
        assert_eq!(which(&table, &s, Some("b.test")), Some(0));
        assert_eq!(which(&table, &s, None), Some(0));
    }
}
