//! `builtin:cookie`: HTTP session affinity by a cookie Gantry sets (HAProxy's `cookie ...
//! insert`). The cookie's value names a backend by a hash of its address, so it means the
//! same on every Gantry replica and across restarts and needs no table. A request without the
//! cookie, or whose backend is gone or unhealthy, is balanced and answered with a fresh
//! `Set-Cookie`. TCP and TLS ports have no cookies: their connections are balanced.
//!
//! Parameters: `name` (default `GANTRY_BACKEND`), `path` (default `/`), `max_age_seconds`
//! (default: none, a session cookie), `secure` (default false), `http_only` (default true),
//! `same_site` (`lax` default, `strict`, `none`).

use std::collections::HashMap;

use gantry_plugin_sdk::{
    backend_key, export_affinity, host, Affinity, Backend, Header, Params, Request, Stickiness,
    TableSettings,
};
use xxhash_rust::xxh3::xxh3_64;

struct Cookie {
    name: String,
    attributes: String,
    /// Token → backend id for the current set.
    by_token: HashMap<String, u32>,
    /// Backend id → token.
    tokens: HashMap<u32, String>,
}

impl Affinity for Cookie {
    fn configure(params: &Params) -> Result<(Self, TableSettings), String> {
        params.reject_unknown(&[
            "name",
            "path",
            "max_age_seconds",
            "secure",
            "http_only",
            "same_site",
        ])?;
        let name = params.get("name").unwrap_or("GANTRY_BACKEND").to_owned();
        if name.is_empty() || !name.bytes().all(is_token_byte) {
            return Err(format!(
                "parameter `name`: `{name}` is not a valid cookie name"
            ));
        }
        let path = params.get("path").unwrap_or("/");
        if !path.starts_with('/') || !path.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b';') {
            return Err(format!("parameter `path`: `{path}` is not a cookie path"));
        }
        let mut attributes = format!("; Path={path}");
        if params.get("max_age_seconds").is_some() {
            let age: u32 = params.parse_or("max_age_seconds", 0)?;
            attributes.push_str(&format!("; Max-Age={age}"));
        }
        let same_site = match params.get("same_site").unwrap_or("lax") {
            "lax" => "Lax",
            "strict" => "Strict",
            "none" => "None",
            other => {
                return Err(format!(
                    "parameter `same_site`: `{other}` is not lax, strict or none"
                ))
            }
        };
        attributes.push_str(&format!("; SameSite={same_site}"));
        // Browsers refuse SameSite=None without Secure: it is forced on (`gantry check` warns
        // of `secure: false` beside it).
        let secure: bool = params.parse_or("secure", false)?;
        if secure || same_site == "None" {
            attributes.push_str("; Secure");
        }
        if params.parse_or("http_only", true)? {
            attributes.push_str("; HttpOnly");
        }
        let cookie = Cookie {
            name,
            attributes,
            by_token: HashMap::new(),
            tokens: HashMap::new(),
        };
        Ok((
            cookie,
            TableSettings {
                idle_timeout_seconds: 0,
            },
        ))
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.tokens = backends
            .iter()
            .map(|b| (b.id, format!("{:016x}", xxh3_64(backend_key(b).as_bytes()))))
            .collect();
        self.by_token = self.tokens.iter().map(|(id, t)| (t.clone(), *id)).collect();
    }

    fn stick(&mut self, _request: &Request) -> Stickiness {
        let Some(cookies) = host::request_header("cookie") else {
            return Stickiness::None;
        };
        cookies
            .split(';')
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(name, _)| *name == self.name)
            .and_then(|(_, value)| self.by_token.get(value.trim_matches('"')))
            .map_or(Stickiness::None, |id| Stickiness::Named(*id))
    }

    fn assigned(&mut self, _request: &Request, backend: u32) -> Option<Header> {
        let token = self.tokens.get(&backend)?;
        Some(Header {
            name: "set-cookie".into(),
            value: format!("{}={token}{}", self.name, self.attributes),
        })
    }
}

/// A byte of an HTTP token (RFC 9110 §5.6.2), as cookie names are.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

export_affinity!(Cookie);
