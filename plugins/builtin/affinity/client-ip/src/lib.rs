//! `builtin:client-ip`: a client's connections and requests go to the backend its first one
//! went to, while it keeps coming back within the idle timeout. Kubernetes' `sessionAffinity:
//! ClientIP` semantics: timeout default 10800 s (3 h), at most 86400 s (one day).
//!
//! Parameters: `timeout_seconds` (1 to 86400, default 10800).
//! The table is the host's, shared by every worker thread; this plugin only names the key.

use gantry_plugin_sdk::{
    client_ip_key, export_affinity, Affinity, Backend, Params, Request, Stickiness, TableSettings,
};

const DEFAULT_TIMEOUT_SECONDS: u32 = 10_800;
const MAX_TIMEOUT_SECONDS: u32 = 86_400;

struct ClientIp;

impl Affinity for ClientIp {
    fn configure(params: &Params) -> Result<(Self, TableSettings), String> {
        params.reject_unknown(&["timeout_seconds"])?;
        let timeout: u32 = params.parse_or("timeout_seconds", DEFAULT_TIMEOUT_SECONDS)?;
        if !(1..=MAX_TIMEOUT_SECONDS).contains(&timeout) {
            return Err(format!(
                "parameter `timeout_seconds`: {timeout} is out of range 1..={MAX_TIMEOUT_SECONDS}"
            ));
        }
        Ok((
            ClientIp,
            TableSettings {
                idle_timeout_seconds: timeout,
            },
        ))
    }

    fn set_backends(&mut self, _backends: Vec<Backend>) {}

    fn stick(&mut self, request: &Request) -> Stickiness {
        Stickiness::Remembered(client_ip_key(request))
    }
}

export_affinity!(ClientIp);
