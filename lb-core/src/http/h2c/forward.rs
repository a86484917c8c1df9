//! One request proxied to an h2c backend (gRPC), whatever the client speaks: the request goes
//! as an HTTP/2 stream on the worker's connection to the backend ([`super`]), its body and
//! trailers as they come, while the response's head, body and trailers come back the same way:
//! both directions flow at once, so client, server and bidirectional streaming all pass. Each
//! direction waits for the receiver (flow-control window, or socket) instead of buffering.
//!
//! The client's side is two small traits, [`ClientBody`] (where the request body comes from)
//! and [`ClientAnswer`] (where the response goes), so that an HTTP/2 stream (`http/h2/to_h2c.rs`)
//! and an HTTP/1 request (`http/relay/to_h2c.rs`) share this one loop. A client that expects
//! `100-continue` gets Gantry's own `100` once the backend's stream is open: the `h2` client
//! keeps a backend's informational responses apart.
//!
//! The exchange's rules hold ([`crate::http::exchange`]): a failed connect goes to another
//! backend; a stream the backend refuses (`REFUSED_STREAM`: nothing was processed) too, whatever
//! the method, when the request had no body; a stream that fails before its answer, when the
//! request is idempotent and had no body. The response head must come within `upstream_read`
//! of the request's end. A response body has no timeout between frames when it is gRPC (a
//! stream may rightly be quiet for long; gRPC deadlines are the client's), and `upstream_read`
//! otherwise.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use lb_policy::{Outcome, PickContext, ResponseHeader as AffinityHeader};
use tokio::time::Instant;

use super::ready;
use crate::http::exchange::{may_resend, next_try, Failure, NextTry, Record};
use crate::pool::attempt::{Attempts, NoBackend};
use crate::route::Route;

/// Where the request body comes from.
pub(crate) trait ClientBody {
    /// The request has no body at all.
    fn is_empty(&self) -> bool;
    /// The next piece of the body; `None` once it has ended; an error when the client went
    /// away ([`Failure::ClientGone`]) or sent a body Gantry refuses.
    async fn data(&mut self) -> Option<Result<Bytes, Failure>>;
    /// `len` bytes of the body went on to the backend (the client may send more).
    fn consumed(&mut self, len: usize);
    /// The body's trailers, once its data has ended.
    async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, Failure>;
}

/// Where the response goes.
pub(crate) trait ClientAnswer {
    /// Tells a client that expects `100-continue` to send its body: the backend's stream is
    /// open (once per request, whatever the tries).
    async fn proceed(&mut self) -> Result<(), Failure>;
    /// Sends the response head; `end`: nothing follows it.
    async fn head(&mut self, response: http::Response<()>, end: bool) -> Result<(), Failure>;
    /// Sends a piece of the body, waiting at most `within` at a time for the client to take
    /// it.
    async fn data(&mut self, data: Bytes, within: Duration) -> Result<(), Failure>;
    /// Ends the response, with the backend's trailers if it sent any.
    async fn end(&mut self, trailers: Option<http::HeaderMap>) -> Result<(), Failure>;
    /// Resolves once the client has given the request up (never, if it cannot tell).
    async fn gone(&mut self);
    /// Ends a response the backend cut short after its head, as the client's protocol says;
    /// `grpc`: the exchange is gRPC's.
    async fn cut(&mut self, grpc: bool) -> Failure;
    /// Answers a request that failed before any answer, by the record's status.
    async fn failed(&mut self, record: &Record<'_>, grpc: bool);
}

/// The client's side of one request: its head for the backend, and its two directions.
pub(crate) struct Client<'c, B, A> {
    /// The request as the backend gets it (forwarding headers set, connection fields gone).
    pub(crate) request: &'c http::Request<()>,
    /// The method is idempotent.
    pub(crate) idempotent: bool,
    /// The exchange is gRPC's (the request's content type says so).
    pub(crate) grpc: bool,
    /// Where the body comes from.
    pub(crate) body: &'c mut B,
    /// Where the answer goes.
    pub(crate) answer: &'c mut A,
}

/// Proxies the request to an h2c backend of `route`, picked by `cx`; `record` gets the
/// outcome.
pub(crate) async fn forward<B: ClientBody, A: ClientAnswer>(
    route: &Route,
    cx: &PickContext<'_>,
    client: Client<'_, B, A>,
    record: &mut Record<'_>,
) {
    let body_empty = client.body.is_empty();
    let resend = may_resend(client.idempotent, body_empty);
    let timeouts = &route.port.settings.timeouts;
    let mut attempts = Attempts::new();
    let failure = loop {
        let mut attempt = match attempts.next(&route.pool, cx) {
            Ok(attempt) => attempt,
            Err(no) => break Some(Failure::NoBackend(no)),
        };
        let affinity = attempt.response_header.take();
        let backend = attempt.backend().clone();
        let (send, fresh) = match ready(&backend, timeouts).await {
            Ok(ready) => ready,
            Err(outcome) => {
                if attempts.failed(&route.pool, attempt, outcome) {
                    continue;
                }
                record.backend = Some(backend);
                break Some(Failure::NoBackend(NoBackend::Exhausted));
            }
        };
        if fresh {
            attempts.connected(&attempt);
        }
        record.backend = Some(backend);
        // Counted however the exchange ends (the upload's future may be dropped unfinished).
        let bytes_up = AtomicU64::new(0);
        let turn = Turn {
            route,
            affinity: affinity.as_ref(),
            grpc: client.grpc,
            bytes_up: &bytes_up,
        };
        let request = copy(client.request);
        let ended = turn
            .exchange(send, request, client.body, client.answer, record)
            .await;
        record.bytes_received += bytes_up.load(Ordering::Relaxed);
        let (failure, resendable) = match ended {
            Ok(()) => break None,
            Err(Early::Answered(failure)) => break failure,
            // A refused stream processed nothing: any method may go elsewhere, if it had no
            // body to send again.
            Err(Early::Refused) => (closed(), body_empty),
            Err(Early::Failed(failure)) => (failure, resend),
        };
        match next_try(failure, false, resendable) {
            NextTry::GiveUp(failure) => break Some(failure),
            // `ready` replaces a connection that broke: either way the attempt loop picks again.
            NextTry::FreshConnection | NextTry::OtherBackend => {}
        }
        // The attempt loop tells the backend's observers.
        if !attempts.failed(&route.pool, attempt, Outcome::ConnectFailed) {
            break Some(Failure::NoBackend(NoBackend::Exhausted));
        }
    };
    record.retries = attempts.failures();
    if let Some(failure) = failure {
        let answered = record.status.is_some();
        record.failed(failure);
        if !answered {
            client.answer.failed(record, client.grpc).await;
        }
    }
}

/// A copy of the request's head, for one try (sending a request consumes it).
fn copy(request: &http::Request<()>) -> http::Request<()> {
    let mut copy = http::Request::new(());
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.headers_mut() = request.headers().clone();
    copy
}

fn closed() -> Failure {
    Failure::Backend {
        timed_out: false,
        dead_reuse: false,
    }
}

/// How an exchange that did not end well ended.
enum Early {
    /// The backend refused the stream: nothing was processed.
    Refused,
    /// It failed before any answer.
    Failed(Failure),
    /// It failed after the response head went to the client (or the client went away then):
    /// the failure, if it is one worth recording.
    Answered(Option<Failure>),
}

/// What one try with a backend needs beside the client.
struct Turn<'t> {
    route: &'t Route,
    /// The affinity's header for the response (a `Set-Cookie`).
    affinity: Option<&'t AffinityHeader>,
    grpc: bool,
    /// Request body bytes sent up so far.
    bytes_up: &'t AtomicU64,
}

impl Turn<'_> {
    /// Sends `request` on `send`, streams the client's body up and the answer down.
    async fn exchange<B: ClientBody, A: ClientAnswer>(
        &self,
        mut send: h2::client::SendRequest<Bytes>,
        request: http::Request<()>,
        body: &mut B,
        answer: &mut A,
        record: &mut Record<'_>,
    ) -> Result<(), Early> {
        let timeouts = self.route.port.settings.timeouts;
        let body_empty = body.is_empty();
        let expects_continue = expects_continue(request.headers());
        let (response, mut upstream) = match send.send_request(request, body_empty) {
            Ok(pair) => pair,
            Err(err) => return Err(early(&err)),
        };
        // An h2c backend's own `100` is not relayed (the `h2` client keeps informational
        // responses apart): Gantry answers the expectation once the stream is open, as a
        // proxy may (RFC 9110 §10.1.1).
        if !body_empty && expects_continue && answer.proceed().await.is_err() {
            upstream.send_reset(Reason::CANCEL);
            return Err(Early::Answered(Some(Failure::ClientGone)));
        }
        let mut uploaded = body_empty;
        let upload = upload(body, &mut upstream, self.bytes_up);
        tokio::pin!(upload);
        tokio::pin!(response);
        // The response head, while the body goes up.
        let mut answer_by = body_empty.then(|| Instant::now() + timeouts.upstream_read);
        let head = loop {
            let timer = async {
                match answer_by {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                head = &mut response => break head,
                sent = &mut upload, if !uploaded => {
                    uploaded = true;
                    match sent {
                        Ok(()) => answer_by = Some(Instant::now() + timeouts.upstream_read),
                        Err(Upload::Client(Failure::ClientGone)) => {
                            return Err(Early::Answered(Some(Failure::ClientGone)));
                        }
                        Err(Upload::Client(failure)) => return Err(Early::Failed(failure)),
                        // The backend stopped taking the body; its answer says why.
                        Err(Upload::BackendGone) => answer_by = Some(Instant::now() + timeouts.upstream_read),
                    }
                }
                () = timer => return Err(Early::Failed(Failure::Backend { timed_out: true, dead_reuse: false })),
                () = answer.gone() => return Err(Early::Answered(Some(Failure::ClientGone))),
            }
        };
        let head = match head {
            Ok(head) => head,
            Err(err) => return Err(early(&err)),
        };
        let (mut parts, mut down) = head.into_parts();
        if let Some(header) = self.affinity {
            parts
                .headers
                .append(header.name.clone(), header.value.clone());
        }
        if let Some(backend) = record.backend.clone() {
            record.answered(&backend, parts.status.as_u16());
        }
        let grpc = self.grpc || is_grpc(&parts.headers);
        if grpc {
            // As from an HTTP/1 backend: a cut gRPC response ends with trailers, which a
            // declared length would make a protocol error.
            parts.headers.remove(http::header::CONTENT_LENGTH);
        }
        let ended = down.is_end_stream();
        let response = http::Response::from_parts(parts, ());
        if answer.head(response, ended).await.is_err() {
            return Err(Early::Answered(Some(Failure::ClientGone)));
        }
        if ended {
            return Ok(());
        }
        // The body down, while whatever is left of the request goes up.
        let stall = (!grpc).then_some(timeouts.upstream_read);
        let download = download(&mut down, answer, timeouts.client_idle, stall, grpc);
        tokio::pin!(download);
        let result = loop {
            tokio::select! {
                biased;
                done = &mut download => break done,
                sent = &mut upload, if !uploaded => {
                    uploaded = true;
                    if let Err(Upload::Client(failure)) = sent {
                        break Err(Some(failure));
                    }
                }
            }
        };
        match result {
            Ok(sent) => {
                record.bytes_sent += sent;
                Ok(())
            }
            Err(failure) => Err(Early::Answered(failure)),
        }
    }
}

/// Whether a request expects `100 Continue` before it sends its body.
fn expects_continue(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Whether a request or response is gRPC's.
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// How an error before the response head counts.
fn early(err: &h2::Error) -> Early {
    if err.reason() == Some(Reason::REFUSED_STREAM) {
        Early::Refused
    } else {
        tracing::debug!(%err, "h2c stream failed before its answer");
        Early::Failed(closed())
    }
}

/// Why the upload stopped early.
enum Upload {
    /// The client went away or sent what Gantry refuses.
    Client(Failure),
    BackendGone,
}

/// Sends the client's body and trailers to the backend as they come.
async fn upload<B: ClientBody>(
    body: &mut B,
    up: &mut SendStream<Bytes>,
    bytes: &AtomicU64,
) -> Result<(), Upload> {
    loop {
        match body.data().await {
            Some(Ok(data)) => {
                let len = data.len();
                send_data(up, data, false, None)
                    .await
                    .map_err(|_| Upload::BackendGone)?;
                body.consumed(len);
                bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            Some(Err(failure)) => {
                up.send_reset(Reason::CANCEL);
                return Err(Upload::Client(failure));
            }
            None => {
                let sent = match body.trailers().await {
                    Ok(Some(trailers)) => up.send_trailers(trailers),
                    Ok(None) => up.send_data(Bytes::new(), true),
                    Err(failure) => {
                        up.send_reset(Reason::CANCEL);
                        return Err(Upload::Client(failure));
                    }
                };
                return sent.map_err(|_| Upload::BackendGone);
            }
        }
    }
}

/// Sends the backend's body and trailers to the client as they come; the body bytes sent, or
/// the failure (`None`: the client went away, nothing to hold against the backend).
async fn download<A: ClientAnswer>(
    body: &mut RecvStream,
    answer: &mut A,
    client_idle: Duration,
    stall: Option<Duration>,
    grpc: bool,
) -> Result<u64, Option<Failure>> {
    let mut sent = 0u64;
    loop {
        let next = async {
            match stall {
                Some(within) => tokio::time::timeout(within, body.data()).await.ok(),
                None => Some(body.data().await),
            }
        };
        let next = tokio::select! {
            biased;
            next = next => next,
            () = answer.gone() => return Err(Some(Failure::ClientGone)),
        };
        match next {
            Some(Some(Ok(data))) => {
                let len = data.len();
                answer.data(data, client_idle).await.map_err(Some)?;
                let _ = body.flow_control().release_capacity(len);
                sent += len as u64;
            }
            Some(None) => {
                return match body.trailers().await {
                    Ok(trailers) => answer
                        .end(trailers)
                        .await
                        .map(|()| sent)
                        .map_err(|_| Some(Failure::ClientGone)),
                    Err(_) => Err(Some(answer.cut(grpc).await)),
                };
            }
            // The backend reset the stream or its connection broke, or it stalled.
            Some(Some(Err(_))) | None => return Err(Some(answer.cut(grpc).await)),
        }
    }
}

/// Sends `data` within the stream's flow-control window, waiting for the receiver to open it
/// for at most `within` at a time (a receiver that never does is let go; `None`: no bound).
pub(crate) async fn send_data(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
    within: Option<Duration>,
) -> Result<(), Failure> {
    if data.is_empty() {
        return send.send_data(data, end).map_err(|_| Failure::ClientGone);
    }
    while !data.is_empty() {
        send.reserve_capacity(data.len());
        let granted = match send.capacity() {
            0 => {
                let wait = std::future::poll_fn(|cx| send.poll_capacity(cx));
                let waited = match within {
                    Some(within) => tokio::time::timeout(within, wait).await,
                    None => Ok(wait.await),
                };
                match waited {
                    Ok(Some(Ok(granted))) => granted,
                    Ok(_) => return Err(Failure::ClientGone),
                    Err(_) => {
                        send.send_reset(Reason::CANCEL);
                        return Err(Failure::ClientGone);
                    }
                }
            }
            granted => granted,
        };
        if granted == 0 {
            continue;
        }
        let piece = data.split_to(granted.min(data.len()));
        send.send_data(piece, end && data.is_empty())
            .map_err(|_| Failure::ClientGone)?;
    }
    Ok(())
}
