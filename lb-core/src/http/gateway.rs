//! Gantry's pingora `ProxyHttp`, which serves only HTTP/1 requests to h2c backends (HTTP/2
//! clients have Gantry's own server, [`crate::http::h2`], which will take these over too): per
//! request, load the listener's current route, pick a backend
//! through the pool's attempt loop (another after a failed connect, by its retry rule; pingora
//! calls back for each try), rewrite the forwarding headers,
//! add the affinity's response header (a `set-cookie`), and account the outcome in metrics
//! and the access log.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use lb_config::BackendProtocol;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, ProxyWarnLogContext, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use tokio::time::Instant;

use lb_policy::{hash_key, Outcome, PickContext, ResponseHeader as AffinityHeader};

use super::exchange::strip_port;
use super::forwarding::forwarded;
use crate::http::routes::ListenerRoutes;
use crate::pool::attempt::{self, Attempt, Attempts, NoBackend};
use crate::pool::BackendState;
use crate::route::Route;

/// The proxy logic of every HTTP listener: each request is served with the route its
/// listener holds now, found by the address the client connected to.
pub struct Gateway {
    routes: Arc<ListenerRoutes>,
}

impl Gateway {
    /// Serves each request with the route `routes` holds for its listener.
    pub fn new(routes: Arc<ListenerRoutes>) -> Self {
        Gateway { routes }
    }
}

/// Per-request state.
pub struct RequestCtx {
    /// The route of the request's listener, from its first filter on.
    route: Option<Arc<Route>>,
    started: Instant,
    /// The try now under way, its backend counted in flight while held.
    attempt: Option<Attempt>,
    /// The last backend chosen, kept for accounting after its lease is dropped.
    backend: Option<Arc<BackendState>>,
    attempts: Attempts,
    /// The affinity's header for the response, from the last pick.
    affinity_header: Option<AffinityHeader>,
}

fn client_ip(session: &Session) -> Option<SocketAddr> {
    session.client_addr().and_then(|a| a.as_inet()).copied()
}

/// The name the client asked for: `Host` (or `:authority`), without a port; SNI otherwise.
fn authority(session: &Session) -> Option<&str> {
    let header = session.req_header();
    let host = header
        .uri
        .host()
        .or_else(|| header.headers.get(http::header::HOST)?.to_str().ok());
    host.map(strip_port)
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            route: None,
            started: Instant::now(),
            attempt: None,
            backend: None,
            attempts: Attempts::new(),
            affinity_header: None,
        }
    }

    async fn early_request_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let local = session.server_addr().and_then(|a| a.as_inet()).copied();
        ctx.route = local.and_then(|local| self.routes.find(local));
        let Some(route) = &ctx.route else {
            // Only a listener Gantry registered hands connections to pingora.
            return Err(Error::explain(
                ErrorType::HTTPStatus(503),
                "no listener route for this address",
            ));
        };
        // A client that stops taking its answer (an HTTP/2 stream whose window never opens)
        // is given up on after `client_idle` without progress, as the HTTP/1 relay does.
        session.set_write_timeout(Some(route.port.settings.timeouts.client_idle));
        Ok(())
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let route = routed(&ctx.route)?;
        let client = client_ip(session);
        let headers = &session.req_header().headers;
        let cx = PickContext {
            client,
            authority: authority(session),
            protocol: route.port.protocol,
            hash_key: hash_key(
                &route.port.balancer.hash_key,
                client.map(|c| c.ip()),
                Some(headers),
            ),
            headers: Some(headers),
        };
        let mut attempt = match ctx.attempts.next(&route.pool, &cx) {
            Ok(attempt) => attempt,
            // Nothing to try at all is "unavailable"; everything tried and failed is a bad
            // gateway.
            Err(no) => {
                let status = match no {
                    NoBackend::Unavailable => 503,
                    NoBackend::Exhausted => 502,
                };
                return Err(Error::explain(
                    ErrorType::HTTPStatus(status),
                    "no backend available",
                ));
            }
        };
        let backend = attempt.backend().clone();
        ctx.affinity_header = attempt.response_header.take();
        let mut peer = HttpPeer::new(backend.address, false, String::new());
        let timeouts = &route.port.settings.timeouts;
        peer.options.connection_timeout = Some(timeouts.connect);
        peer.options.read_timeout = Some(timeouts.upstream_read);
        peer.options.idle_timeout = Some(timeouts.upstream_idle);
        if route.port.backend_protocol == BackendProtocol::H2c {
            peer.options.set_http_version(2, 2);
        }
        ctx.attempt = Some(attempt);
        ctx.backend = Some(backend);
        Ok(Box::new(peer))
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        #[cfg(unix)] _fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let (false, Some(attempt)) = (reused, &ctx.attempt) {
            ctx.attempts.connected(attempt);
        }
        Ok(())
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        if let (Some(attempt), Some(route)) = (ctx.attempt.take(), &ctx.route) {
            // Nothing was sent yet, so any method may go to another backend (the retry rule).
            let retry = ctx
                .attempts
                .failed(&route.pool, attempt, upstream_outcome(&e));
            e.set_retry(retry);
        }
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client = client_ip(session).map(|a| a.ip());
        let prior_for = upstream
            .headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok());
        let prior_proto = upstream
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok());
        let headers = forwarded(routed(&ctx.route)?, client, prior_for, prior_proto);
        upstream.insert_header("x-forwarded-proto", headers.forwarded_proto)?;
        match headers.forwarded_for {
            Some(value) => upstream.insert_header("x-forwarded-for", value)?,
            None => {
                upstream.remove_header("x-forwarded-for");
            }
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(header) = ctx.affinity_header.take() {
            upstream.append_header(header.name, header.value)?;
        }
        Ok(())
    }

    fn suppress_error_log(&self, _session: &Session, _ctx: &RequestCtx, _e: &Error) -> bool {
        // `logging` reports failures once, with the service, port and backend.
        true
    }

    fn suppress_proxy_warn_log(
        &self,
        _session: &Session,
        ctx: &RequestCtx,
        e: &Error,
        _context: ProxyWarnLogContext,
    ) -> bool {
        // An attempt that is retried is no failure a client saw: a warning per retry would
        // cry wolf on every backend restart. `logging` warns once if the request failed.
        if let Some(route) = &ctx.route {
            let key = &route.port.key;
            tracing::debug!(service = %key.service, port = %key.port, error = %e, "attempt failed; retrying");
        }
        true
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        _ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = status_for(e);
        if code > 0 {
            let _ = session.respond_error(code).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        let Some(route) = &ctx.route else {
            return; // refused before it had a listener: nothing to count it under
        };
        // Decided before the request is counted, so whoever sees the count knows the
        // decision was taken.
        let log_access = route.logs_access();
        let status = session.response_written().map(|r| r.status.as_u16());
        let backend = ctx.backend.as_deref();
        let metrics = backend.map_or(&route.unrouted, |b| &b.metrics);
        let elapsed = ctx.started.elapsed();
        metrics.request(status, elapsed);
        if let Some(backend) = &ctx.backend {
            let pool = &route.pool;
            match (e, status) {
                (Some(e), _) if *e.esource() == ErrorSource::Upstream => {
                    attempt::finished(pool, backend, upstream_outcome(e), elapsed);
                }
                (None, Some(status)) => {
                    attempt::finished(pool, backend, Outcome::Responded(status), elapsed);
                }
                _ => {} // the client's doing, or no answer to judge the backend by
            }
        }
        // The lease ends with the request.
        ctx.attempt = None;
        metrics
            .bytes_received
            .inc_by(session.body_bytes_read() as u64);
        metrics.bytes_sent.inc_by(session.body_bytes_sent() as u64);
        let key = &route.port.key;
        let backend_label = backend.map_or("none", |b| b.label.as_str());
        match e {
            // A client that goes away is the client's business: keep it out of the warnings,
            // which any client could otherwise flood.
            Some(e) if *e.esource() == ErrorSource::Downstream => tracing::debug!(
                service = %key.service, port = %key.port, backend = backend_label,
                error = %e, "client ended the request"
            ),
            // No backends at all is a configuration state (in /config and metrics), answered
            // 503; not worth a warning per request.
            Some(e) if route.pool.backends().is_empty() => tracing::debug!(
                service = %key.service, port = %key.port, error = %e, "no backends"
            ),
            Some(e) => tracing::warn!(
                service = %key.service, port = %key.port, backend = backend_label,
                status = status.unwrap_or(0), error = %e, "request failed"
            ),
            None => {}
        }
        if log_access {
            let head = session.req_header();
            tracing::info!(
                target: "gantry::access",
                service = %key.service,
                port = %key.port,
                client = %client_ip(session).map_or_else(String::new, |a| a.to_string()),
                method = %head.method,
                path = head.uri.path_and_query().map_or("/", |p| p.as_str()),
                status = status.unwrap_or(0),
                backend = backend_label,
                duration_ms = crate::logging::millis(elapsed),
                bytes_sent = session.body_bytes_sent(),
            );
        }
    }
}

/// The request's route, set by its first filter.
fn routed(route: &Option<Arc<Route>>) -> Result<&Arc<Route>> {
    route
        .as_ref()
        .ok_or_else(|| Error::explain(ErrorType::HTTPStatus(503), "no listener route"))
}

/// How a failure on the backend's side counts for health policies.
fn upstream_outcome(e: &Error) -> Outcome {
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => {
            Outcome::TimedOut
        }
        _ => Outcome::ConnectFailed,
    }
}

/// Timeouts toward a backend are 504; other backend failures 502; a status chosen by the
/// proxy (503 when no backend) is kept; a client that went away gets nothing.
fn status_for(e: &Error) -> u16 {
    match (e.etype(), e.esource()) {
        (ErrorType::HTTPStatus(code), _) => *code,
        (
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout,
            ErrorSource::Upstream,
        ) => 504,
        (_, ErrorSource::Upstream) => 502,
        (
            ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed,
            ErrorSource::Downstream,
        ) => 0,
        (_, ErrorSource::Downstream) => 400,
        _ => 500,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_timeouts_are_504_and_other_upstream_errors_502() {
        let timeout = Error::new(ErrorType::ReadTimedout).into_up();
        assert_eq!(status_for(&timeout), 504);
        let refused = Error::new(ErrorType::ConnectRefused).into_up();
        assert_eq!(status_for(&refused), 502);
        let chosen = Error::new(ErrorType::HTTPStatus(503));
        assert_eq!(status_for(&chosen), 503);
    }
}
