//! Test fixture: an affinity policy that misbehaves on every request as its `mode` parameter
//! says, so tests can prove affinity faults never fail a request.
//!
//! Modes: `trap` (panics in `stick`), `invalid` (names a backend id that does not exist),
//! `bad-header` (asks for a response header that is not valid HTTP).

use gantry_plugin_sdk::{
    export_affinity, Affinity, Backend, Header, Params, Request, Stickiness, TableSettings,
};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Trap,
    Invalid,
    BadHeader,
}

struct Misbehave(Mode);

impl Affinity for Misbehave {
    fn configure(params: &Params) -> Result<(Self, TableSettings), String> {
        let mode = match params.get("mode").unwrap_or("trap") {
            "trap" => Mode::Trap,
            "invalid" => Mode::Invalid,
            "bad-header" => Mode::BadHeader,
            other => return Err(format!("unknown mode `{other}`")),
        };
        let settings = TableSettings {
            idle_timeout_seconds: 0,
        };
        Ok((Misbehave(mode), settings))
    }

    fn set_backends(&mut self, _backends: Vec<Backend>) {}

    fn stick(&mut self, _request: &Request) -> Stickiness {
        match self.0 {
            Mode::Trap => panic!("misbehaving on purpose"),
            Mode::Invalid => Stickiness::Named(9_999),
            Mode::BadHeader => Stickiness::None,
        }
    }

    fn assigned(&mut self, _request: &Request, _backend: u32) -> Option<Header> {
        (self.0 == Mode::BadHeader).then(|| Header {
            name: "set cookie".into(),
            value: "a\nb".into(),
        })
    }
}

export_affinity!(Misbehave);
