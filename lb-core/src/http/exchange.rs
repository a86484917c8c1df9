//! One HTTP exchange, whatever engine carries it (the HTTP/1 relay, the HTTP/2 front, the
//! upgrade tunnel): what a policy may read to pick the backend ([`pick_context`]), why an
//! exchange failed and the status that answers it ([`Failure`]), whether a failed try may go
//! to another backend ([`may_resend`], with [`crate::pool::attempt`]'s budget), and the one
//! [`Record`] that feeds the metrics, the health observers and the access log. The engines only
//! move bytes; every rule a client can see is written here once.
//!
//! **The retry rule**, for every engine: a request goes to another backend when the connect
//! failed (nothing was sent), or when the backend closed the connection before answering
//! anything and the request is idempotent and was read whole (so it can be sent again as it
//! was). Either counts against the port's `retries`. A backend that timed out is not retried
//! (the client would wait twice), nor one that answered anything.

use std::net::SocketAddr;
use std::time::Duration;

use lb_policy::{hash_key, Outcome, PickContext};
use tokio::time::Instant;

use crate::http::head::refusal_status;
use crate::metrics::Rejection;
use crate::pool::attempt::{self, NoBackend};
use crate::pool::BackendState;
use crate::route::Route;

/// The policies' view of a request from `client` for `authority` (`Host` or `:authority`,
/// without its port), with its `headers` when the port's policies read any
/// ([`Route::reads_headers`]): the same for every engine.
pub fn pick_context<'a>(
    route: &Route,
    client: SocketAddr,
    authority: Option<&'a str>,
    headers: Option<&'a http::HeaderMap>,
) -> PickContext<'a> {
    PickContext {
        client: Some(client),
        authority,
        protocol: route.port.protocol,
        hash_key: hash_key(&route.port.balancer.hash_key, Some(client.ip()), headers),
        headers,
    }
}

/// A host name without its port; an IPv6 literal keeps its brackets.
pub fn strip_port(host: &str) -> &str {
    if let Some(end) = host.strip_prefix('[').and_then(|rest| rest.find(']')) {
        return &host[..end + 2];
    }
    host.rsplit_once(':').map_or(host, |(name, _)| name)
}

/// Whether a request whose backend closed before answering may be sent again (to a fresh
/// connection or another backend): it is idempotent and was read whole.
pub fn may_resend(idempotent: bool, read_whole: bool) -> bool {
    idempotent && read_whole
}

/// What an engine does after a try failed before any answer, by the retry rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NextTry {
    /// Send the request again on a fresh connection to the same backend: a kept connection
    /// turned out closed (the backend did nothing wrong; not counted against `retries`).
    FreshConnection,
    /// Send it to another backend, within the `retries` budget.
    OtherBackend,
    /// Answer the failure.
    GiveUp(Failure),
}

/// What follows a try that failed with `failure` before any answer, on a kept connection
/// (`reused`) or a new one, for a request the rule lets be sent again (`resend`, see
/// [`may_resend`]) or not.
pub fn next_try(failure: Failure, reused: bool, resend: bool) -> NextTry {
    match failure {
        Failure::Backend {
            dead_reuse: true, ..
        } if reused && resend => NextTry::FreshConnection,
        Failure::Backend {
            timed_out: false, ..
        } if resend => NextTry::OtherBackend,
        // A closed kept connection says nothing of the backend; a fresh one that closed does.
        Failure::Backend { timed_out, .. } if !reused => NextTry::GiveUp(Failure::Backend {
            timed_out,
            dead_reuse: false,
        }),
        other => NextTry::GiveUp(other),
    }
}

/// Whether `method` is idempotent (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &[u8]) -> bool {
    matches!(
        method,
        b"GET" | b"HEAD" | b"OPTIONS" | b"TRACE" | b"PUT" | b"DELETE"
    )
}

/// Why an exchange failed after its request was accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// No backend to try (503), or every try failed or the budget is spent (502).
    NoBackend(NoBackend),
    /// The backend broke the exchange before its answer (502), or did not answer in time
    /// (504).
    Backend {
        /// It did not answer in time.
        timed_out: bool,
        /// It was a kept connection that closed before answering anything.
        dead_reuse: bool,
    },
    /// The backend's answer cannot be relayed (502).
    BadResponse,
    /// The backend's response broke off after its head was sent: the client sees a cut
    /// response (HTTP/1: the connection closes; HTTP/2: the stream is reset, or ends with
    /// `grpc-status: 14`), the status stays the one it got.
    CutResponse,
    /// The client's request was refused (4xx).
    Client(Rejection),
    /// The client went away.
    ClientGone,
}

impl Failure {
    /// The status a client gets for the failure, if it gets one.
    pub fn status(self) -> Option<u16> {
        match self {
            Failure::NoBackend(NoBackend::Unavailable) => Some(503),
            Failure::NoBackend(NoBackend::Exhausted) | Failure::BadResponse => Some(502),
            Failure::Backend {
                timed_out: true, ..
            } => Some(504),
            Failure::Backend { .. } => Some(502),
            Failure::Client(why) => Some(refusal_status(why)),
            Failure::CutResponse | Failure::ClientGone => None,
        }
    }

    /// The `reason` the access log and warnings give.
    pub fn reason(self) -> &'static str {
        match self {
            Failure::NoBackend(NoBackend::Unavailable) => "no_backend",
            Failure::NoBackend(NoBackend::Exhausted) => "backends_failed",
            Failure::Backend {
                timed_out: true, ..
            } => "backend_timeout",
            Failure::Backend { .. } => "backend_closed",
            Failure::BadResponse => "bad_response",
            Failure::CutResponse => "response_cut",
            Failure::Client(why) => why.label(),
            Failure::ClientGone => "client_gone",
        }
    }

    /// What the failure tells the backend's health observers, if anything: a kept connection
    /// the backend had closed says nothing of its health, nor does anything the client did.
    pub fn health(self) -> Option<Outcome> {
        match self {
            Failure::Backend {
                timed_out: true, ..
            } => Some(Outcome::TimedOut),
            Failure::Backend {
                dead_reuse: true, ..
            } => None,
            Failure::Backend { .. } | Failure::BadResponse | Failure::CutResponse => {
                Some(Outcome::ConnectFailed)
            }
            Failure::NoBackend(_) | Failure::Client(_) | Failure::ClientGone => None,
        }
    }

    /// Whether the failure is the client's doing (logged at `debug`: any client could
    /// otherwise flood the warnings).
    fn clients_doing(self) -> bool {
        matches!(self, Failure::Client(_) | Failure::ClientGone)
    }
}

/// The engine that carried an exchange, as the access log names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    /// An HTTP/1.x request.
    Http1,
    /// An HTTP/2 stream.
    Http2,
    /// An HTTP/1 upgrade (WebSocket), tunnelled after its `101`.
    Upgrade,
}

impl Engine {
    fn label(self) -> &'static str {
        match self {
            Engine::Http1 => "http/1.1",
            Engine::Http2 => "h2",
            Engine::Upgrade => "upgrade",
        }
    }
}

/// What the access log says of a request: its method and target, copied while the head is at
/// hand (only when the access log is on).
#[derive(Debug, Default)]
pub struct AccessLine {
    /// The method.
    pub method: String,
    /// The request target (path and query).
    pub path: String,
}

/// How one exchange went, as every engine reports it: the one place that tells the backend's
/// health observers how it answered (or failed), counts the request in the metrics, logs a
/// failure and writes the access log line, with the same fields whatever the engine.
pub struct Record<'r> {
    /// The route the exchange was served with.
    pub route: &'r Route,
    /// The engine that carried it.
    pub engine: Engine,
    /// The client's address.
    pub client: SocketAddr,
    /// When the request was read.
    pub started: Instant,
    /// Method and target, when the access log is on.
    pub line: Option<AccessLine>,
    /// The status the client got, if any.
    pub status: Option<u16>,
    /// The backend the exchange last went to.
    pub backend: Option<std::sync::Arc<BackendState>>,
    /// Request body bytes read from the client.
    pub bytes_received: u64,
    /// Response body bytes sent to the client.
    pub bytes_sent: u64,
    /// Backends tried and failed before the last one.
    pub retries: usize,
    /// Why it failed, if it did.
    pub failure: Option<Failure>,
}

impl<'r> Record<'r> {
    /// A record for an exchange on `route` from `client` that started now-ish (`started`),
    /// with the access line taken if the access log is on.
    pub fn new(
        route: &'r Route,
        engine: Engine,
        client: SocketAddr,
        started: Instant,
        line: impl FnOnce() -> AccessLine,
    ) -> Self {
        Record {
            route,
            engine,
            client,
            started,
            line: route.logs_access().then(line),
            status: None,
            backend: None,
            bytes_received: 0,
            bytes_sent: 0,
            retries: 0,
            failure: None,
        }
    }

    /// `backend` answered with `status`: its health observers hear it, and the time to its
    /// answer feeds its latency.
    pub fn answered(&mut self, backend: &std::sync::Arc<BackendState>, status: u16) {
        let outcome = Outcome::Responded(status);
        attempt::finished(&self.route.pool, backend, outcome, self.started.elapsed());
        self.status = Some(status);
        self.backend = Some(backend.clone());
    }

    /// The exchange failed this way (with [`Record::backend`] set when a backend was
    /// involved): the status is the failure's unless one was sent, and the backend's health
    /// observers hear what the failure says of it.
    pub fn failed(&mut self, failure: Failure) {
        self.failure = Some(failure);
        if self.status.is_none() {
            self.status = failure.status();
        }
        if let Failure::Client(why) = failure {
            self.route.metrics.rejected(why);
        }
        if let (Some(backend), Some(outcome)) = (&self.backend, failure.health()) {
            attempt::finished(&self.route.pool, backend, outcome, self.started.elapsed());
        }
    }

    /// Counts, reports and logs the exchange; `elapsed` since `started`.
    pub fn finish(self) {
        let elapsed = self.started.elapsed();
        self.finish_after(elapsed);
    }

    fn finish_after(self, elapsed: Duration) {
        let route = self.route;
        let key = &route.port.key;
        let backend = self.backend.as_deref();
        let label = backend.map_or("none", |b| b.label.as_str());
        let metrics = backend.map_or(&route.unrouted, |b| &b.metrics);
        metrics.request(self.status, elapsed);
        metrics.bytes_received.inc_by(self.bytes_received);
        metrics.bytes_sent.inc_by(self.bytes_sent);
        let reason = self.failure.map_or("", Failure::reason);
        match self.failure {
            Some(failure) if failure.clients_doing() => tracing::debug!(
                service = %key.service, port = %key.port, backend = label, reason,
                "client ended the request"
            ),
            // No backends at all is a configuration state (in /config and the metrics),
            // answered 503: not worth a warning per request.
            Some(Failure::NoBackend(_)) if route.pool.backends().is_empty() => {
                tracing::debug!(service = %key.service, port = %key.port, "no backends")
            }
            Some(_) => tracing::warn!(
                service = %key.service, port = %key.port, backend = label,
                status = self.status.unwrap_or(0), reason, retries = self.retries,
                "request failed"
            ),
            None => {}
        }
        if let Some(line) = self.line {
            tracing::info!(
                target: "gantry::access",
                service = %key.service,
                port = %key.port,
                client = %self.client,
                protocol = self.engine.label(),
                method = %line.method,
                path = %line.path,
                status = self.status.unwrap_or(0),
                backend = label,
                duration_ms = crate::logging::millis(elapsed),
                bytes_received = self.bytes_received,
                bytes_sent = self.bytes_sent,
                retries = self.retries,
                reason,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_stripped_from_host_names_and_ipv6_literals() {
        assert_eq!(strip_port("a.test:8080"), "a.test");
        assert_eq!(strip_port("a.test"), "a.test");
        assert_eq!(strip_port("[::1]:80"), "[::1]");
        assert_eq!(strip_port("[::1]"), "[::1]");
    }

    #[test]
    fn failures_map_to_one_status_each() {
        let timed_out = Failure::Backend {
            timed_out: true,
            dead_reuse: false,
        };
        let closed = Failure::Backend {
            timed_out: false,
            dead_reuse: false,
        };
        assert_eq!(timed_out.status(), Some(504));
        assert_eq!(closed.status(), Some(502));
        assert_eq!(Failure::BadResponse.status(), Some(502));
        assert_eq!(
            Failure::NoBackend(NoBackend::Unavailable).status(),
            Some(503)
        );
        assert_eq!(Failure::NoBackend(NoBackend::Exhausted).status(), Some(502));
        assert_eq!(Failure::Client(Rejection::BodyTimeout).status(), Some(408));
        assert_eq!(Failure::ClientGone.status(), None);
        assert_eq!(Failure::CutResponse.status(), None);
    }

    #[test]
    fn only_the_backends_doing_reaches_its_health() {
        let dead_reuse = Failure::Backend {
            timed_out: false,
            dead_reuse: true,
        };
        assert_eq!(dead_reuse.health(), None);
        assert_eq!(Failure::ClientGone.health(), None);
        assert_eq!(Failure::CutResponse.health(), Some(Outcome::ConnectFailed));
    }

    #[test]
    fn a_dead_kept_connection_is_tried_fresh_and_a_closed_backend_elsewhere() {
        let closed = |dead_reuse| Failure::Backend {
            timed_out: false,
            dead_reuse,
        };
        assert_eq!(next_try(closed(true), true, true), NextTry::FreshConnection);
        assert_eq!(next_try(closed(false), false, true), NextTry::OtherBackend);
        assert_eq!(
            next_try(closed(true), false, false),
            NextTry::GiveUp(closed(false)),
            "a new connection that closed is the backend's failure"
        );
        let timed_out = Failure::Backend {
            timed_out: true,
            dead_reuse: false,
        };
        assert_eq!(next_try(timed_out, true, true), NextTry::GiveUp(timed_out));
    }

    #[test]
    fn only_whole_idempotent_requests_are_sent_again() {
        assert!(may_resend(is_idempotent(b"GET"), true));
        assert!(!may_resend(is_idempotent(b"GET"), false));
        assert!(!may_resend(is_idempotent(b"POST"), true));
    }
}
