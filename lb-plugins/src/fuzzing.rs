//! Entry points for fuzzing what plugins answer (`lb_core::fuzzing::plugin_answers` drives
//! them with arbitrary bytes, through a libFuzzer target and the corpus `cargo test`
//! replays): a health plugin's settings and an affinity plugin's response header, each
//! checked by the host exactly as when a plugin returns them. Whatever a plugin answers, the
//! host acts only on what is safe to write to a socket.

use lb_policy::{HealthSettings, ResponseHeader};

use super::bindings::v2;
use super::health::HealthKind;
use super::policy::Kind;

/// What a health plugin may ask for an HTTP probe: path, host, TLS.
pub struct HttpProbe {
    /// The request path.
    pub path: String,
    /// The `Host`, if not the backend's address.
    pub host: Option<String>,
    /// Over TLS.
    pub tls: bool,
}

/// A 0.2.0 health plugin's settings made of these parts, as the host takes them: `Ok` is
/// what the host would act on, `Err` why it refuses them.
pub fn health_settings(
    interval_ms: u32,
    timeout_ms: u32,
    port: Option<u16>,
    http: Option<HttpProbe>,
) -> Result<HealthSettings, String> {
    let kind = match http {
        None => v2::ProbeKind::TcpConnect,
        Some(HttpProbe { path, host, tls }) => {
            v2::ProbeKind::Http(v2::HttpProbe { path, host, tls })
        }
    };
    HealthKind::from_v2(v2::HealthSettings {
        probe: Some(v2::ProbePlan {
            kind,
            interval_ms,
            timeout_ms,
            port,
        }),
        observe_traffic: false,
    })
}

/// An affinity plugin's response header as the host takes it (`None`: not valid HTTP, so
/// not sent).
pub fn affinity_header(name: String, value: String) -> Option<ResponseHeader> {
    super::affinity::response_header(super::affinity::Header { name, value })
}
