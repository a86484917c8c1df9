//! The admin listener: `/metrics` (Prometheus text), `/healthz` (the process answers),
//! `/readyz` (the first configuration is serving and no shutdown has begun) and `/config` (the
//! running model and live listener state as JSON; certificate keys are never included).
//! It binds to loopback unless the operator configures another address, and `/config` and
//! `/metrics` ask for a bearer token when one is configured (`admin.token_file` or
//! `token_env`); the probes (`/healthz`, `/readyz`) never do.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use http::{Method, Response, StatusCode};
use lb_config::{ListenerKey, Model};
use lb_k8s::telemetry::Leadership;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use lb_core::route::Route;

/// What the admin endpoints read from the running appliance.
pub trait AdminView: Send + Sync {
    /// Prometheus text exposition.
    fn metrics_text(&self) -> String;
    /// Whether traffic should be sent here.
    fn is_ready(&self) -> bool;
    /// The running configuration and listener state.
    fn config_json(&self) -> serde_json::Value;
    /// The answer to `/explain` with this query string (see [`crate::explain`]).
    fn explain(&self, query: &str) -> Result<serde_json::Value, crate::explain::ExplainError>;
    /// Whether a request with this `Authorization` value may read `/config` and `/metrics`
    /// ([`lb_config::Admin::access`]).
    fn authorized(&self, authorization: Option<&[u8]>) -> Authorization;
}

/// The answer to a request for `/config` or `/metrics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authorization {
    /// Served.
    Granted,
    /// The token is missing or wrong.
    WrongToken,
    /// No token is configured and the listener is off loopback: nobody is served, and the
    /// answer says how to configure one.
    TokenNeeded,
}

impl Authorization {
    /// What `admin` makes of a request with this `Authorization` value.
    pub fn of(admin: &lb_config::Admin, authorization: Option<&[u8]>) -> Authorization {
        use lb_config::AdminAccess;
        match admin.access() {
            AdminAccess::Loopback | AdminAccess::Open => Authorization::Granted,
            AdminAccess::TokenNeeded => Authorization::TokenNeeded,
            AdminAccess::Token => match &admin.token {
                Some(token) if token.accepts(authorization) => Authorization::Granted,
                _ => Authorization::WrongToken,
            },
        }
    }
}

/// The body of a 401 on an endpoint off loopback with no token configured.
const TOKEN_NEEDED: &str = "this admin endpoint is not on a loopback address and has no token: \
/config, /metrics and /explain are served only with one. Set admin.token_file (a file holding the token) \
or admin.token_env (an environment variable holding it) and send `Authorization: Bearer TOKEN`; \
or set admin.open: true to serve them to anyone who reaches this address \
(docs/operations.md#admin-endpoints)\n";

/// The admin HTTP application.
pub struct AdminApp {
    view: Arc<dyn AdminView>,
}

impl AdminApp {
    /// Answers from `view`.
    pub fn new(view: Arc<dyn AdminView>) -> Self {
        AdminApp { view }
    }
}

fn respond(status: StatusCode, content_type: &str, body: impl Into<Vec<u8>>) -> Response<Vec<u8>> {
    let body = body.into();
    let mut response = Response::new(body);
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(value) = content_type.parse() {
        headers.insert(http::header::CONTENT_TYPE, value);
    }
    let length = response.body().len().to_string();
    if let Ok(value) = length.parse() {
        response
            .headers_mut()
            .insert(http::header::CONTENT_LENGTH, value);
    }
    response
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        if head.method != Method::GET && head.method != Method::HEAD {
            return respond(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
        }
        let path = head.uri.path();
        let guarded = matches!(path, "/metrics" | "/config" | "/explain");
        let authorization = head
            .headers
            .get(http::header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        let refused = match self.view.authorized(authorization) {
            _ if !guarded => None,
            Authorization::Granted => None,
            Authorization::WrongToken => Some("a bearer token is required\n"),
            Authorization::TokenNeeded => Some(TOKEN_NEEDED),
        };
        if let Some(body) = refused {
            let mut response = respond(StatusCode::UNAUTHORIZED, "text/plain", body);
            response.headers_mut().insert(
                http::header::WWW_AUTHENTICATE,
                http::HeaderValue::from_static("Bearer realm=\"gantry\""),
            );
            return response;
        }
        match path {
            "/metrics" => respond(
                StatusCode::OK,
                "text/plain; version=0.0.4",
                self.view.metrics_text(),
            ),
            "/healthz" => respond(StatusCode::OK, "text/plain", "ok\n"),
            "/readyz" if self.view.is_ready() => respond(StatusCode::OK, "text/plain", "ready\n"),
            "/readyz" => respond(StatusCode::SERVICE_UNAVAILABLE, "text/plain", "not ready\n"),
            "/config" => {
                let mut body = serde_json::to_vec_pretty(&self.view.config_json())
                    .unwrap_or_else(|_| b"{}".to_vec());
                body.push(b'\n');
                respond(StatusCode::OK, "application/json", body)
            }
            "/explain" => {
                // Loading a plugin for the first explanation may take a while: off the
                // admin's event loop.
                let (view, query) = (self.view.clone(), head.uri.query().unwrap_or("").to_owned());
                let answer = tokio::task::spawn_blocking(move || view.explain(&query)).await;
                match answer {
                    Ok(Ok(json)) => {
                        let mut body =
                            serde_json::to_vec_pretty(&json).unwrap_or_else(|_| b"{}".to_vec());
                        body.push(b'\n');
                        respond(StatusCode::OK, "application/json", body)
                    }
                    Ok(Err(err)) => {
                        use crate::explain::ExplainError;
                        let status = match err {
                            ExplainError::BadRequest(_) => StatusCode::BAD_REQUEST,
                            ExplainError::NotFound(_) => StatusCode::NOT_FOUND,
                            ExplainError::Plugins(_) => StatusCode::INTERNAL_SERVER_ERROR,
                        };
                        respond(status, "text/plain", format!("{err}\n"))
                    }
                    Err(_) => respond(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "text/plain",
                        "the explanation failed\n",
                    ),
                }
            }
            _ => respond(
                StatusCode::NOT_FOUND,
                "text/plain",
                "not found; try /metrics, /healthz, /readyz, /config or /explain\n",
            ),
        }
    }
}

/// One running listener, as `/config` shows it.
pub struct ListenerState<'a> {
    /// The port.
    pub key: &'a ListenerKey,
    /// The address it is bound to.
    pub address: SocketAddr,
    /// What it serves now.
    pub route: Arc<Route>,
    /// Connections open now.
    pub open_connections: usize,
}

/// The `/config` document: the running model (certificates by source, never their keys), the
/// live state of each listener (backends with back-off and health, policies, open
/// connections), and, with a cluster, which replica writes to it (`kubernetes_leadership`).
pub fn config_document<'a>(
    model: &Model,
    listeners: impl Iterator<Item = ListenerState<'a>>,
    leadership: Option<&Leadership>,
    routing: Option<&crate::routing::Shown>,
) -> serde_json::Value {
    let listeners: serde_json::Map<String, serde_json::Value> = listeners
        .map(|l| {
            let route = &l.route;
            let backends: Vec<_> = route
                .pool
                .backends()
                .iter()
                .map(|b| {
                    serde_json::json!({
                        "address": b.label,
                        "backing_off": b.is_backing_off(),
                        "health": b.health_view(),
                        "in_flight": b.metrics.in_flight.get(),
                    })
                })
                .collect();
            let affinity = route.policies.affinity.as_ref();
            let mut state = serde_json::json!({
                "address": l.address.to_string(),
                "protocol": route.port.protocol.as_str(),
                "policy": route.pool.policy(),
                "affinity": affinity.map(|a| a.name()),
                "affinity_entries": affinity.and_then(|a| a.table()).map(|t| t.len()),
                "health": route
                    .policies
                    .health
                    .iter()
                    .map(|h| h.name())
                    .collect::<Vec<_>>(),
                "open_connections": l.open_connections,
                "backends": backends,
            });
            let shadow = &route.policies.shadow;
            if shadow.balancer.is_some() || shadow.affinity.is_some() {
                let affinity = shadow.affinity.as_ref().map(|(a, _)| a);
                state["shadow"] = serde_json::json!({
                    "balancer": shadow.balancer.as_ref().map(|(b, _)| b.name()),
                    "affinity": affinity.map(|a| a.name()),
                    "affinity_entries": affinity.and_then(|a| a.table()).map(|t| t.len()),
                });
            }
            (l.key.to_string(), state)
        })
        .collect();
    let mut document = serde_json::json!({
        "build": crate::build_info::BUILD,
        "config": model,
        "listeners": listeners,
    });
    if let Some(leadership) = leadership {
        document["kubernetes_leadership"] = serde_json::json!(leadership);
    }
    if let Some(routing) = routing {
        document["routing"] = serde_json::json!(routing);
    }
    document
}
