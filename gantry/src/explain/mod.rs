//! `gantry explain` and the admin endpoint it calls (`GET /explain?...`, behind the admin
//! token): which backend a request from a given client would reach now, and why.
//!
//! The request is described by its port, client address and, for HTTP, its authority, headers
//! and cookies; the answer is the pool's own selection run without side effects
//! ([`lb_core::pool::BackendPool::explain`]) with the port's plugins loaded by a plugin host of
//! the explainer's own (one instance, its own fault records: an explanation that makes a
//! plugin fault is not counted against the serving plugin), after the port's source-range
//! verdict. Explanations are served one at a time.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use lb_config::{Model, Protocol};
use lb_core::http::exchange::{pick_context, strip_port};
use lb_core::pool::ExplainPolicies;
use lb_core::route::Route;
use lb_plugins::{NoTelemetry, PluginHost};
use serde_json::json;

mod client;
mod text;

pub use client::ask;
pub use text::explain_text;

/// Most headers and cookies one explanation may carry.
const MAX_HEADERS: usize = 64;

/// A request to explain, as the query string of `/explain` carries it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExplainRequest {
    /// The service.
    pub service: String,
    /// The port's name.
    pub port: String,
    /// The client's address (port 0 when not given).
    pub client: Option<SocketAddr>,
    /// The TLS server name or HTTP `Host`.
    pub authority: Option<String>,
    /// The request's path (shown; no policy reads it).
    pub path: Option<String>,
    /// Request headers, `(name, value)`.
    pub headers: Vec<(String, String)>,
    /// Cookies, `(name, value)`, sent as one `Cookie` header.
    pub cookies: Vec<(String, String)>,
}

impl ExplainRequest {
    /// Reads `service`, `port`, `client` (an IP, or IP:port), `authority`, `path`, `header`
    /// (`name: value`, repeated) and `cookie` (`name=value`, repeated) from a query string.
    pub fn from_query(query: &str) -> Result<ExplainRequest, String> {
        let mut request = ExplainRequest::default();
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.into_owned();
            match key.as_ref() {
                "service" => request.service = value,
                "port" => request.port = value,
                "client" => request.client = Some(client_address(&value)?),
                "authority" => request.authority = Some(value),
                "path" => request.path = Some(value),
                "header" => {
                    let (name, value) = value
                        .split_once(':')
                        .ok_or_else(|| format!("header `{value}` is not `name: value`"))?;
                    request.headers.push((name.trim().into(), value.trim().into()));
                }
                "cookie" => {
                    let (name, value) = value
                        .split_once('=')
                        .ok_or_else(|| format!("cookie `{value}` is not `name=value`"))?;
                    request.cookies.push((name.trim().into(), value.trim().into()));
                }
                other => {
                    return Err(format!(
                        "unknown parameter `{other}`: service, port, client, authority, path, header, cookie"
                    ))
                }
            }
        }
        if request.service.is_empty() || request.port.is_empty() {
            return Err("`service` and `port` are required".into());
        }
        if request.headers.len() + request.cookies.len() > MAX_HEADERS {
            return Err(format!("at most {MAX_HEADERS} headers and cookies"));
        }
        Ok(request)
    }

    /// The query string that carries this request.
    pub fn to_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("service", &self.service);
        query.append_pair("port", &self.port);
        if let Some(client) = self.client {
            query.append_pair("client", &client.to_string());
        }
        if let Some(authority) = &self.authority {
            query.append_pair("authority", authority);
        }
        if let Some(path) = &self.path {
            query.append_pair("path", path);
        }
        for (name, value) in &self.headers {
            query.append_pair("header", &format!("{name}: {value}"));
        }
        for (name, value) in &self.cookies {
            query.append_pair("cookie", &format!("{name}={value}"));
        }
        query.finish()
    }

    /// The request's headers as the data path would hold them.
    fn header_map(&self) -> Result<http::HeaderMap, String> {
        let mut headers = http::HeaderMap::new();
        for (name, value) in &self.headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| format!("`{name}` is not a header name"))?;
            let value = http::HeaderValue::from_str(value)
                .map_err(|_| format!("the value of `{name}` is not a header value"))?;
            headers.append(name, value);
        }
        if !self.cookies.is_empty() {
            let pairs: Vec<String> = self
                .cookies
                .iter()
                .map(|(n, v)| format!("{n}={v}"))
                .collect();
            let value = http::HeaderValue::from_str(&pairs.join("; "))
                .map_err(|_| "the cookies are not a header value".to_owned())?;
            headers.append(http::header::COOKIE, value);
        }
        Ok(headers)
    }
}

/// An IP address, or an IP address and port (`192.0.2.7`, `192.0.2.7:4000`, `[2001:db8::7]:4000`).
fn client_address(text: &str) -> Result<SocketAddr, String> {
    text.parse::<SocketAddr>()
        .or_else(|_| text.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 0)))
        .map_err(|_| format!("client `{text}` is not an IP address or IP:port"))
}

/// Why an explanation could not be given.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    /// The question is malformed (400).
    #[error("{0}")]
    BadRequest(String),
    /// No such port (404).
    #[error("{0}")]
    NotFound(String),
    /// The port's plugins could not be loaded for the explanation (500).
    #[error("{0}")]
    Plugins(String),
}

/// Explains requests, with a plugin host of its own made on first use.
#[derive(Default)]
pub struct Explainer {
    host: Mutex<Option<PluginHost>>,
}

impl Explainer {
    /// `request`, to be served by `route` (the live route of its port) under `model`.
    pub fn explain(
        &self,
        model: &Model,
        route: &Arc<Route>,
        request: &ExplainRequest,
    ) -> Result<serde_json::Value, ExplainError> {
        let client = request
            .client
            .ok_or_else(|| ExplainError::BadRequest("`client` is required".into()))?;
        let port = &route.port;
        let ranges = &port.settings.source_ranges;
        let mut answer = json!({
            "service": request.service,
            "port": request.port,
            "client": client.to_string(),
            "protocol": port.protocol.as_str(),
        });
        if !ranges.is_empty() && !ranges.contains(client.ip()) {
            answer["source_range"] = json!("refused");
            answer["backend"] = serde_json::Value::Null;
            answer["decided_by"] = json!("source_range");
            return Ok(answer);
        }
        answer["source_range"] = json!(if ranges.is_empty() { "none" } else { "allowed" });
        let headers = request.header_map().map_err(ExplainError::BadRequest)?;
        let http = port.protocol.is_http();
        // As the data path: headers only where a policy of the port reads them.
        let headers = (http && route.reads_headers).then_some(&headers);
        let authority = request.authority.as_deref().map(strip_port);
        let cx = pick_context(route, client, authority, headers);

        let mut host = self.host.lock().unwrap_or_else(|p| p.into_inner());
        let host = match &mut *host {
            Some(host) => host,
            empty => empty.insert(
                PluginHost::with_compile_cache(
                    &model.plugin_limits,
                    Arc::new(NoTelemetry),
                    1,
                    &model.runtime.plugin_cache,
                )
                .map_err(|e| ExplainError::Plugins(e.to_string()))?,
            ),
        };
        host.set_limits(&model.plugin_limits);
        let plugins = |e: lb_plugins::PluginError| ExplainError::Plugins(e.to_string());
        let protocol: Protocol = port.protocol;
        let balancer = host.factory(&port.balancer, protocol).map_err(plugins)?;
        let affinity = match &port.affinity {
            Some(policy) => Some(host.affinity_factory(policy, protocol).map_err(plugins)?),
            None => None,
        };
        let live = &route.policies;
        let policies = ExplainPolicies {
            balancer: balancer.as_ref(),
            balancer_quarantined: live.balancer.quarantined(),
            affinity: affinity.as_deref(),
            affinity_quarantined: live.affinity.as_ref().is_some_and(|a| a.quarantined()),
            health: live.health.iter().map(|h| h.name().to_owned()).collect(),
        };
        let explanation = route.pool.explain(&cx, &policies);
        // Only this model's plugins stay loaded.
        host.commit(model);
        let mut explained = serde_json::to_value(explanation)
            .map_err(|e| ExplainError::Plugins(format!("cannot show the explanation: {e}")))?;
        if let (Some(fields), Some(extra)) = (explained.as_object_mut(), answer.as_object()) {
            for (key, value) in extra {
                fields.insert(key.clone(), value.clone());
            }
        }
        if http {
            explained["hash_key"] = json!(format!("{:016x}", cx.hash_key));
            if request.path.is_some() {
                explained["path"] = json!("not read by any policy");
            }
        }
        Ok(explained)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_travels_as_a_query_string_and_back() {
        let request = ExplainRequest {
            service: "web".into(),
            port: "http".into(),
            client: Some("[2001:db8::7]:4000".parse().expect("addr")),
            authority: Some("shop.example:443".into()),
            path: Some("/cart?x=1&y=2".into()),
            headers: vec![("x-canary".into(), "always; really".into())],
            cookies: vec![("session".into(), "a=b".into())],
        };
        assert_eq!(ExplainRequest::from_query(&request.to_query()), Ok(request));
        let bare =
            ExplainRequest::from_query("service=web&port=http&client=192.0.2.7").expect("valid");
        assert_eq!(bare.client, Some("192.0.2.7:0".parse().expect("addr")));
        for (query, problem) in [
            ("port=http", "`service` and `port` are required"),
            (
                "service=web&port=http&client=nope",
                "client `nope` is not an IP address or IP:port",
            ),
            (
                "service=web&port=http&header=x",
                "header `x` is not `name: value`",
            ),
            (
                "service=web&port=http&colour=red",
                "unknown parameter `colour`",
            ),
        ] {
            let refused = ExplainRequest::from_query(query).expect_err(query);
            assert!(refused.starts_with(problem), "{query}: {refused}");
        }
    }
}
