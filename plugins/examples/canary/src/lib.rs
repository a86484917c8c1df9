//! An example of a user's own balancer (not a built-in): a canary split by header.
//!
//! Requests whose header `header` (default `x-canary`) equals `value` (default `always`) go to
//! the canary backends, those listening on port `canary_port`; every other request goes,
//! round-robin, to the rest. With no canary backend left, canary requests fall back to the
//! rest rather than fail. See docs/plugins.md for how it was written and how to load it.

use gantry_plugin_sdk::{export_balancer, host, Backend, Balancer, Params, Request};

struct Canary {
    header: String,
    value: String,
    canary_port: u16,
    canary: Vec<u32>,
    stable: Vec<u32>,
}

impl Balancer for Canary {
    fn configure(params: &Params) -> Result<Self, String> {
        params.reject_unknown(&["header", "value", "canary_port"])?;
        let canary_port = params
            .get("canary_port")
            .ok_or("parameter `canary_port` is required: the port the canary backends listen on")?;
        Ok(Canary {
            header: params
                .get("header")
                .unwrap_or("x-canary")
                .to_ascii_lowercase(),
            value: params.get("value").unwrap_or("always").to_owned(),
            canary_port: canary_port
                .parse()
                .map_err(|_| format!("parameter `canary_port`: `{canary_port}` is not a port"))?,
            canary: Vec::new(),
            stable: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        let live = backends.iter().filter(|b| b.weight > 0);
        let (canary, stable): (Vec<&Backend>, Vec<&Backend>) =
            live.partition(|b| b.port == self.canary_port);
        self.canary = canary.iter().map(|b| b.id).collect();
        self.stable = stable.iter().map(|b| b.id).collect();
    }

    fn pick(&mut self, _request: &Request, _attempt: u32) -> Option<u32> {
        let wants_canary =
            host::request_header(&self.header).as_deref() == Some(self.value.as_str());
        let group = match (wants_canary, self.canary.is_empty()) {
            (true, false) => &self.canary,
            _ if !self.stable.is_empty() => &self.stable,
            _ => &self.canary,
        };
        if group.is_empty() {
            return None;
        }
        let turn = host::sequence() % group.len() as u64;
        Some(group[turn as usize])
    }
}

export_balancer!(Canary);
