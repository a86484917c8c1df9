//! One HTTP/1 request relayed to a backend and its response relayed back: the backend chosen
//! through the pool's attempt loop (another after a failed connect, by the retry rule), an
//! idle connection reused when one is alive, the head and the body sent as they come while the
//! response is awaited (so `Expect: 100-continue` and early answers work), the response
//! relayed with exact framing, then the outcome told to health policies, metrics and the
//! access log through the one [`Record`].
//!
//! Statuses and the retry rule are the exchange's ([`crate::http::exchange`]). A request sent
//! on a reused connection that turns out dead (closed before any answer) is sent once more on
//! a new connection to the same backend, when the rule allows sending it again, as nginx and
//! pingora do; that does not count against `retries` (the backend did nothing wrong).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use lb_policy::{Outcome, PickContext, ResponseHeader as AffinityHeader};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;

use super::framing::{Body, ChunkError};
use super::request::{self, Request};
use super::response::{self, Exchange, Response};
use super::{idle, refuse};
use crate::http::deadline::Deadline;
use crate::http::exchange::{
    may_resend, next_try, pick_context, strip_port, AccessLine, Engine, Failure, NextTry, Record,
};
use crate::http::forwarding::ClientIp;
use crate::metrics::Rejection;
use crate::pool::attempt::{Attempt, Attempts, NoBackend};
use crate::pool::BackendState;
use crate::route::Route;
use crate::tcp;

/// Room read at a time from a backend's response body.
pub(super) const READ_CHUNK: usize = 16 * 1024;

/// The buffers of one client connection: reused from request to request while the client
/// keeps sending, given back while it idles ([`Buffers::release_while_idle`]).
#[derive(Default)]
pub struct Buffers {
    /// What the client sent and nothing has consumed yet (pipelined requests included).
    pub client_in: BytesMut,
    /// The client's deadlines: for the next request, and for the rest of a head.
    pub client_timer: Deadline,
    /// The backend's deadlines: to answer, and for each read of a response body.
    upstream_timer: Deadline,
    /// The request's authority, kept for picking again on a retry.
    authority: String,
    /// The head (and the start of the body) for the backend.
    pub(super) upstream_out: Vec<u8>,
    /// What the backend sent.
    upstream_in: BytesMut,
    /// The head (and the start of the body) for the client.
    pub(super) client_out: Vec<u8>,
}

impl Buffers {
    /// Gives the buffers back before waiting for a request that is not in hand yet: a
    /// kept-alive connection costs the process little while it idles (the next request's
    /// bytes are read onto the stack first, see [`crate::http::head`]), at the price of an
    /// allocation or two per request, which the allocator's thread cache serves. The timers
    /// stay: re-arming one is what makes them cheap.
    pub fn release_while_idle(&mut self) {
        if self.client_in.is_empty() {
            self.client_in = BytesMut::new();
            self.authority = String::new();
            self.upstream_out = Vec::new();
            self.upstream_in = BytesMut::new();
            self.client_out = Vec::new();
        }
    }
}

/// Whether the client connection carries on after a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Read the next request.
    KeepAlive,
    /// Close the connection.
    Close,
}

/// The client side of one request.
pub struct Client<'a, C> {
    /// The connection.
    pub io: &'a mut C,
    /// The client's address.
    pub peer: SocketAddr,
    /// Its IP address with the text the forwarding headers carry, made once per connection.
    pub ip: &'a ClientIp,
    /// Whether the listener is draining (then the connection closes after this request).
    pub drain: &'a watch::Receiver<bool>,
}

/// Relays the request whose complete head starts `buffers.client_in`.
pub async fn relay<C>(route: &Route, mut client: Client<'_, C>, buffers: &mut Buffers) -> After
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let started = Instant::now();
    let Some(request) = parse_or_refuse(route, &mut client, buffers).await else {
        return After::Close;
    };
    let limits = &route.port.settings.limits;
    let mut body = Body::new(request.framing, limits.max_header_bytes as usize);
    let in_hand = match body.accept(&buffers.client_in[request.head_len..], |_| {}) {
        Ok(n) => n,
        Err(_) => {
            refuse(route, client.io, Rejection::Malformed).await;
            return After::Close;
        }
    };
    let record = Record::new(route, Engine::Http1, client.peer, started, || {
        access_line(&request, &buffers.client_in)
    });
    // The authority outlives the head's bytes (a retry picks again after they are consumed),
    // in a buffer the connection keeps.
    let mut authority = std::mem::take(&mut buffers.authority);
    authority.clear();
    let known = request
        .host
        .clone()
        .and_then(|host| std::str::from_utf8(&buffers.client_in[host]).ok())
        .map(|host| authority.push_str(strip_port(host)))
        .is_some();
    let cx = pick_context(
        route,
        client.peer,
        known.then_some(authority.as_str()),
        request.headers.as_ref(),
    );
    let mut attempts = Attempts::new();
    let mut chosen = choose(route, &cx, &mut attempts, Some(started)).await;
    // What was in hand goes with the head, in one write; the rest follows as it comes.
    buffers
        .upstream_out
        .extend_from_slice(&buffers.client_in[request.head_len..request.head_len + in_hand]);
    buffers.client_in.advance(request.head_len + in_hand);
    let mut run = Run {
        route,
        request: &request,
        body,
        record,
    };
    run.record.bytes_received = in_hand as u64;
    let outcome = loop {
        let ended = match chosen {
            Ok(chosen) => {
                run.with_backend(chosen, client.io, client.drain, buffers)
                    .await
            }
            Err(no) => {
                run.record.failed(Failure::NoBackend(no));
                Ended::Finished(Err(Failure::NoBackend(no)))
            }
        };
        match ended {
            Ended::Finished(outcome) => break outcome,
            Ended::Retry(attempt) => {
                let backend = attempt.backend().clone();
                // The attempt loop tells the backend's observers.
                if !attempts.failed(&route.pool, attempt, Outcome::ConnectFailed) {
                    let failure = Failure::NoBackend(NoBackend::Exhausted);
                    run.record.backend = Some(backend);
                    run.record.failed(failure);
                    break Err(failure);
                }
                tracing::debug!(service = %route.port.key.service, port = %route.port.key.port, backend = %backend.label, "backend failed before answering; retrying on another");
                chosen = choose(route, &cx, &mut attempts, Some(started)).await;
            }
        }
    };
    run.record.retries = attempts.failures();
    buffers.authority = authority;
    run.finish(outcome, client.io, &mut buffers.client_timer)
        .await
}

/// Parses and checks the request whose complete head starts `buffers.client_in`, writing its
/// head for an HTTP/1 backend to `buffers.upstream_out`; a request refused is answered (and
/// the connection closes): `None`. Both relays start here.
pub(super) async fn parse_or_refuse<C>(
    route: &Route,
    client: &mut Client<'_, C>,
    buffers: &mut Buffers,
) -> Option<Request>
where
    C: AsyncWrite + Unpin,
{
    let parsed = request::parse(
        &buffers.client_in,
        route,
        Some(client.ip),
        &mut buffers.upstream_out,
    );
    match parsed {
        Ok(request) => Some(request),
        Err(why) => {
            refuse(route, client.io, why).await;
            None
        }
    }
}

/// How a request's turn with one backend ended: finished (answered or failed), or to be
/// tried on another backend, this attempt having failed before any answer.
enum Ended {
    Finished(Finished),
    Retry(Attempt),
}

/// A backend chosen for the request, its connection open.
pub(crate) struct Chosen {
    pub(crate) attempt: Attempt,
    pub(crate) upstream: TcpStream,
    pub(crate) reused: bool,
    /// The affinity's header for the response (a `Set-Cookie`).
    pub(crate) affinity: Option<AffinityHeader>,
}

/// Picks a backend and gets a connection to it: an idle one if alive (and `started` is
/// given: when the request was read, so the clock is not read again for the idle pool), else
/// a new one, trying other backends after a failed connect by the retry rule (`attempts`
/// counts across the request's turns).
pub(crate) async fn choose(
    route: &Route,
    cx: &PickContext<'_>,
    attempts: &mut Attempts,
    started: Option<Instant>,
) -> Result<Chosen, NoBackend> {
    let pool = &route.pool;
    loop {
        let mut attempt = attempts.next(pool, cx)?;
        let affinity = attempt.response_header.take();
        let backend = attempt.backend().clone();
        let kept = started.and_then(|now| idle::take(backend.address, now));
        if let Some(upstream) = kept {
            return Ok(Chosen {
                attempt,
                upstream,
                reused: true,
                affinity,
            });
        }
        match tcp::dial(&backend, route.port.settings.timeouts.connect).await {
            Ok(upstream) => {
                attempts.connected(&attempt);
                return Ok(Chosen {
                    attempt,
                    upstream,
                    reused: false,
                    affinity,
                });
            }
            Err(outcome) => {
                if !attempts.failed(pool, attempt, outcome) {
                    return Err(NoBackend::Exhausted);
                }
            }
        }
    }
}

/// A fresh connection to `backend` in place of a kept one found dead (the retry rule's
/// [`NextTry::FreshConnection`]), what was read from the dead one dropped; `false` when the
/// backend cannot be reached now (the request then goes to another).
pub(crate) async fn redial(
    route: &Route,
    backend: &BackendState,
    upstream: &mut TcpStream,
    upstream_in: &mut BytesMut,
) -> bool {
    upstream_in.clear();
    match tcp::dial(backend, route.port.settings.timeouts.connect).await {
        Ok(fresh) => {
            *upstream = fresh;
            true
        }
        Err(_) => false,
    }
}

/// The state of one request while it runs.
struct Run<'r> {
    route: &'r Route,
    request: &'r Request,
    /// The request body, as far as it has been read from the client.
    body: Body,
    /// How it goes, for the metrics and the access log.
    record: Record<'r>,
}

/// How a request ended: what the client connection does next, or why it failed (the
/// [`Record`] has the rest).
type Finished = Result<After, Failure>;

impl Run<'_> {
    async fn with_backend<C>(
        &mut self,
        chosen: Chosen,
        client: &mut C,
        drain: &watch::Receiver<bool>,
        buffers: &mut Buffers,
    ) -> Ended
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let Chosen {
            attempt,
            mut upstream,
            mut reused,
            affinity,
        } = chosen;
        let backend = attempt.backend().clone();
        // By the exchange's retry rule: on a fresh connection to the same backend when a kept
        // one turns out dead, and to another backend when this one fails before answering
        // (as nginx's `proxy_next_upstream error` does). A timeout is not retried.
        let resendable = may_resend(self.request.idempotent, self.body.is_done());
        let response = loop {
            match self
                .exchange(&mut upstream, client, drain, buffers, affinity.as_ref())
                .await
            {
                Ok(response) => break response,
                Err(failure) => match next_try(failure, reused, resendable) {
                    NextTry::FreshConnection => {
                        let route = self.route;
                        if !redial(route, &backend, &mut upstream, &mut buffers.upstream_in).await {
                            return Ended::Retry(attempt);
                        }
                        reused = false;
                    }
                    NextTry::OtherBackend => {
                        buffers.upstream_in.clear();
                        return Ended::Retry(attempt);
                    }
                    NextTry::GiveUp(failure) => {
                        self.record.backend = Some(backend);
                        self.record.failed(failure);
                        return Ended::Finished(Err(failure));
                    }
                },
            }
        };
        self.record.answered(&backend, response.status);
        let relayed = self
            .relay_response(&response, &mut upstream, client, buffers)
            .await;
        drop(attempt); // the lease: the backend's in-flight count
        match relayed {
            Ok(()) => {
                let clean =
                    response.reusable && self.body.is_done() && buffers.upstream_in.is_empty();
                if clean {
                    let idle_for = self.route.port.settings.timeouts.upstream_idle;
                    idle::put(backend.address, upstream, idle_for);
                }
                let after = if response.keep_alive {
                    After::KeepAlive
                } else {
                    After::Close
                };
                Ended::Finished(Ok(after))
            }
            // The head is out: the client sees a cut response, the status stays what it got.
            Err(failure) => {
                self.record.failed(failure);
                Ended::Finished(Ok(After::Close))
            }
        }
    }

    /// Sends the request (head, and body as it comes) and reads the response head, relaying
    /// 1xx heads to the client on the way.
    async fn exchange<C>(
        &mut self,
        upstream: &mut TcpStream,
        client: &mut C,
        drain: &watch::Receiver<bool>,
        buffers: &mut Buffers,
        affinity: Option<&AffinityHeader>,
    ) -> Result<Response, Failure>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let timeouts = self.route.port.settings.timeouts;
        let Buffers {
            client_in,
            upstream_out,
            upstream_in,
            client_out,
            upstream_timer,
            client_timer,
            ..
        } = buffers;
        let (mut from_backend, mut to_backend) = upstream.split();
        if to_backend.write_all(upstream_out).await.is_err() {
            return Err(Failure::Backend {
                timed_out: false,
                dead_reuse: true,
            });
        }
        // Body bytes at the front of `client_in` not yet sent.
        let mut pending = 0usize;
        loop {
            let body_open = !self.body.is_done() || pending > 0;
            // The backend's time to answer runs once it has the whole request.
            let answer_by = Instant::now()
                + if body_open {
                    Duration::from_secs(86_400)
                } else {
                    timeouts.upstream_read
                };
            // Room for a whole small response in one read (an empty buffer would read 64 bytes).
            upstream_in.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                read = from_backend.read_buf(upstream_in) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return Err(Failure::Backend { timed_out: false, dead_reuse: upstream_in.is_empty() });
                    }
                    let exchange = Exchange {
                        head_method: self.request.head_method,
                        http10: self.request.http10,
                        keep_alive: self.request.keep_alive && !body_open && !*drain.borrow(),
                        affinity,
                    };
                    let Some(response) = response::parse(upstream_in, &exchange, client_out)
                        .map_err(|_| Failure::BadResponse)?
                    else {
                        continue;
                    };
                    if !response.informational {
                        upstream_in.advance(response.head_len);
                        return Ok(response);
                    }
                    upstream_in.advance(response.head_len);
                    if !client_out.is_empty() {
                        write_flushed(client, client_out, client_timer, timeouts.client_idle)
                            .await
                            .map_err(|_| Failure::ClientGone)?;
                    }
                }
                _ = upstream_timer.at(answer_by) => {
                    return Err(Failure::Backend { timed_out: true, dead_reuse: false });
                }
                step = body_step(client, client_in, &mut to_backend, pending, timeouts.client_idle, timeouts.upstream_read), if body_open => {
                    match step? {
                        BodyStep::Wrote(n) => {
                            client_in.advance(n);
                            pending -= n;
                        }
                        BodyStep::Read => {
                            pending = self.body.accept(client_in, |_| {}).map_err(|e: ChunkError| {
                                tracing::debug!(error = ?e, "malformed chunked request body");
                                Failure::Client(Rejection::Malformed)
                            })?;
                            self.record.bytes_received += pending as u64;
                        }
                    }
                }
            }
        }
    }

    /// Relays the response body (its start is in `upstream_in`) after the head in
    /// `client_out`. A failure is the client's going away or the response's being cut.
    async fn relay_response<C>(
        &mut self,
        response: &Response,
        upstream: &mut TcpStream,
        client: &mut C,
        buffers: &mut Buffers,
    ) -> Result<(), Failure>
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let limits = &self.route.port.settings.limits;
        let timeouts = self.route.port.settings.timeouts;
        let mut body = Body::new(response.framing, limits.max_header_bytes as usize);
        let Buffers {
            upstream_in,
            client_out,
            upstream_timer,
            client_timer,
            ..
        } = buffers;
        loop {
            let start = client_out.len();
            let taken = body
                .accept(upstream_in, |range| {
                    if response.dechunk {
                        client_out.extend_from_slice(&upstream_in[range]);
                    }
                })
                .map_err(|_| Failure::CutResponse)?;
            if !response.dechunk {
                client_out.extend_from_slice(&upstream_in[..taken]);
            }
            self.record.bytes_sent += (client_out.len() - start) as u64;
            upstream_in.advance(taken);
            if !client_out.is_empty() {
                write_flushed(client, client_out, client_timer, timeouts.client_idle)
                    .await
                    .map_err(|_| Failure::ClientGone)?;
                client_out.clear();
            }
            if body.is_done() {
                return Ok(());
            }
            upstream_in.reserve(READ_CHUNK);
            let read_by = Instant::now() + timeouts.upstream_read;
            let read = tokio::select! {
                biased;
                read = upstream.read_buf(upstream_in) => read,
                _ = upstream_timer.at(read_by) => return Err(Failure::CutResponse),
            };
            match read {
                Ok(0) if body.until_close() => return Ok(()),
                Ok(0) | Err(_) => return Err(Failure::CutResponse),
                Ok(_) => {}
            }
        }
    }

    /// Answers a failure that left the client without a response, and records the request.
    async fn finish<C>(self, outcome: Finished, client: &mut C, timer: &mut Deadline) -> After
    where
        C: AsyncRead + AsyncWrite + Unpin,
    {
        let after = match outcome {
            Ok(after) => after,
            Err(failure) => {
                if let Some(status) = failure.status() {
                    let answer = crate::http::head::close_response(status);
                    let within = self.route.port.settings.timeouts.client_idle;
                    let _ = write_flushed(client, &answer, timer, within).await;
                }
                After::Close
            }
        };
        self.record.finish();
        after
    }
}

/// One step of sending the request body: write what is pending, or read more.
enum BodyStep {
    Wrote(usize),
    Read,
}

/// Writes pending body bytes (one write, so it can be abandoned midway without losing any),
/// or reads more of the body from the client when none is pending.
async fn body_step<C, W>(
    client: &mut C,
    client_in: &mut BytesMut,
    to_backend: &mut W,
    pending: usize,
    client_idle: Duration,
    upstream_write: Duration,
) -> Result<BodyStep, Failure>
where
    C: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    if pending > 0 {
        return match tokio::time::timeout(upstream_write, to_backend.write(&client_in[..pending]))
            .await
        {
            Ok(Ok(n)) if n > 0 => Ok(BodyStep::Wrote(n)),
            Ok(_) => Err(Failure::Backend {
                timed_out: false,
                dead_reuse: false,
            }),
            Err(_) => Err(Failure::Backend {
                timed_out: true,
                dead_reuse: false,
            }),
        };
    }
    client_in.reserve(READ_CHUNK);
    match tokio::time::timeout(client_idle, client.read_buf(client_in)).await {
        Ok(Ok(n)) if n > 0 => Ok(BodyStep::Read),
        Ok(_) => Err(Failure::ClientGone),
        Err(_) => Err(Failure::Client(Rejection::BodyTimeout)),
    }
}

/// Writes `bytes` to the client and pushes them out (client streams gather small writes),
/// within `within` (`timeouts.client_idle`): a client that stops taking its answer (a closed
/// TCP window) is let go instead of holding its connection and a backend's forever. The timer
/// is set (and the clock read) only if the write has to wait: `biased` polls the write first.
async fn write_flushed<C: AsyncWrite + Unpin>(
    client: &mut C,
    bytes: &[u8],
    timer: &mut Deadline,
    within: Duration,
) -> std::io::Result<()> {
    let write = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    tokio::select! {
        biased;
        written = write => written,
        _ = async { timer.at(lb_policy::clock::instant_after(within)).await } => {
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }
}

/// What the access log says of a request, copied before its head is consumed.
pub(super) fn access_line(request: &Request, head: &[u8]) -> AccessLine {
    let text = |range: std::ops::Range<usize>| String::from_utf8_lossy(&head[range]).into_owned();
    AccessLine {
        method: text(request.method.clone()),
        path: text(request.target.clone()),
    }
}
