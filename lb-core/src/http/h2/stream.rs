//! One HTTP/2 stream proxied to an HTTP/1 backend, within its connection's task (no task,
//! lock or channel per stream): the backend chosen through the pool's attempt loop, a kept
//! connection from the worker's idle pool when one is alive, the request head written as
//! HTTP/1.1 ([`super::request`]) and the body sent as it comes while the answer is awaited
//! (so `Expect: 100-continue` and early answers work: the backend's `100` reaches the client
//! as an informational response), the response head checked by the same rules as the HTTP/1
//! relay's and sent as HTTP/2 headers, the body as DATA frames within the client's window, and
//! chunked trailers as HTTP/2 trailers.
//!
//! Failures follow the exchange ([`crate::http::exchange`]): 502/503/504 before a response,
//! the retry rule, one record. After the response head went out, a response the backend cuts
//! short ends the stream with `RST_STREAM(INTERNAL_ERROR)`, or, for gRPC, with trailers
//! carrying `grpc-status: 14` (UNAVAILABLE), which gRPC clients may retry; a gRPC request that
//! reached no backend at all is refused with `RST_STREAM(REFUSED_STREAM)`, which tells the
//! client nothing was processed.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use lb_policy::{Outcome, ResponseHeader as AffinityHeader};
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::request::{push_chunk, push_last_chunk, write_head, BodyFraming};
use super::respond::{answer, cut};
use super::to_h2c;
use crate::http::exchange::{
    is_idempotent, may_resend, next_try, pick_context, strip_port, AccessLine, Engine, Failure,
    NextTry, Record,
};
use crate::http::forwarding::ClientIp;
use crate::http::h2c::forward::{is_grpc, send_data};
use crate::http::relay::forward::{choose, redial, Chosen};
use crate::http::relay::framing::Body;
use crate::http::relay::idle;
use crate::http::relay::response::{self, Exchange, Response};
use crate::metrics::Rejection;
use crate::pool::attempt::{Attempt, Attempts, NoBackend};
use crate::route::Route;
use lb_config::BackendProtocol;

/// Room read at a time from a backend's response.
const READ_CHUNK: usize = 16 * 1024;

/// Serves one stream of a client at `peer`.
pub(super) async fn serve(
    route: Arc<Route>,
    peer: SocketAddr,
    client_ip: &ClientIp,
    request: http::Request<RecvStream>,
    mut respond: SendResponse<Bytes>,
) {
    let started = Instant::now();
    let (parts, recv) = request.into_parts();
    let mut record = Record::new(&route, Engine::Http2, peer, started, || AccessLine {
        method: parts.method.as_str().to_owned(),
        path: parts
            .uri
            .path_and_query()
            .map_or_else(|| "/".to_owned(), |p| p.as_str().to_owned()),
    });
    let grpc = is_grpc(&parts.headers);
    let refused = if parts.headers.len() > route.port.settings.limits.max_headers as usize {
        Some(Rejection::TooManyHeaders)
    } else if parts.method == http::Method::CONNECT {
        Some(Rejection::MethodNotAllowed)
    } else {
        None
    };
    if let Some(why) = refused {
        record.failed(Failure::Client(why));
        answer(&mut respond, &record, grpc);
        return record.finish();
    }
    // `:authority` wins over `Host` (RFC 9113 §8.3.1).
    let authority = parts.uri.authority().map(|a| a.as_str()).or_else(|| {
        parts
            .headers
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
    });
    // Headers reach the policies only when they read any, as on the HTTP/1 relay (a Wasm
    // call that can read them costs more).
    let cx = pick_context(
        &route,
        peer,
        authority.map(strip_port),
        route.reads_headers.then_some(&parts.headers),
    );
    if route.port.backend_protocol == BackendProtocol::H2c {
        // Boxed: the h2c exchange's state would otherwise make every stream's future (copied
        // into its task when the stream is accepted) a third larger.
        Box::pin(to_h2c::forward(
            &route,
            &cx,
            peer,
            &parts,
            recv,
            respond,
            &mut record,
        ))
        .await;
        return record.finish();
    }
    let mut head = Vec::with_capacity(512 + 64 * parts.headers.len());
    let ended = recv.is_end_stream();
    let framing = write_head(&mut head, &parts, authority, &route, client_ip, ended);
    let mut run = Run {
        route: &route,
        head,
        head_method: parts.method == http::Method::HEAD,
        idempotent: is_idempotent(parts.method.as_str().as_bytes()),
        body: RequestBody::new(recv, framing),
        record,
        grpc,
    };
    let mut attempts = Attempts::new();
    let mut chosen = choose(&route, &cx, &mut attempts, Some(started)).await;
    loop {
        let turn = match chosen {
            Ok(chosen) => run.with_backend(chosen, &mut respond).await,
            Err(no) => Turn::Failed(Failure::NoBackend(no)),
        };
        let failure = match turn {
            Turn::Done => break,
            Turn::Failed(failure) => failure,
            Turn::Retry(attempt) => {
                let backend = attempt.backend().clone();
                // The attempt loop tells the backend's observers.
                if attempts.failed(&route.pool, attempt, Outcome::ConnectFailed) {
                    chosen = choose(&route, &cx, &mut attempts, Some(started)).await;
                    continue;
                }
                run.record.backend = Some(backend);
                Failure::NoBackend(NoBackend::Exhausted)
            }
        };
        run.record.failed(failure);
        answer(&mut respond, &run.record, run.grpc);
        break;
    }
    run.record.retries = attempts.failures();
    run.record.bytes_received = run.body.bytes;
    run.record.finish();
}

/// How a turn with one backend ended.
enum Turn {
    /// Answered (however the answer ended).
    Done,
    /// Failed before any answer.
    Failed(Failure),
    /// Failed before any answer, and may go to another backend.
    Retry(Attempt),
}

/// The request body as it passes: read from the client stream, framed for the backend.
struct RequestBody {
    recv: RecvStream,
    framing: BodyFraming,
    /// Framed bytes not written to the backend yet.
    out: BytesMut,
    /// The client's side has ended (and its end is framed in `out`).
    read_all: bool,
    /// Body bytes read from the client.
    bytes: u64,
}

impl RequestBody {
    fn new(recv: RecvStream, framing: BodyFraming) -> Self {
        let read_all = framing == BodyFraming::Empty;
        RequestBody {
            recv,
            framing,
            out: BytesMut::new(),
            read_all,
            bytes: 0,
        }
    }

    /// Everything the client sent is on its way to the backend.
    fn is_done(&self) -> bool {
        self.read_all && self.out.is_empty()
    }

    /// One step: write what is framed (one write, so the step can be abandoned midway
    /// without losing bytes), or read the next piece from the client, releasing its
    /// flow-control window as it is taken (one piece at a time is held).
    async fn step<W: AsyncWrite + Unpin>(
        &mut self,
        backend: &mut W,
        client_idle: Duration,
        backend_write: Duration,
    ) -> Result<(), Failure> {
        if !self.out.is_empty() {
            return match tokio::time::timeout(backend_write, backend.write(&self.out)).await {
                Ok(Ok(n)) if n > 0 => {
                    self.out.advance(n);
                    Ok(())
                }
                Ok(_) => Err(closed()),
                Err(_) => Err(Failure::Backend {
                    timed_out: true,
                    dead_reuse: false,
                }),
            };
        }
        let next = tokio::time::timeout(client_idle, self.recv.data()).await;
        match next {
            Ok(Some(Ok(data))) => {
                let _ = self.recv.flow_control().release_capacity(data.len());
                self.bytes += data.len() as u64;
                match self.framing {
                    BodyFraming::Chunked => push_chunk(&mut self.out, &data),
                    _ => self.out.extend_from_slice(&data),
                }
                Ok(())
            }
            Ok(Some(Err(_))) => Err(Failure::ClientGone),
            Ok(None) => {
                let trailers = match self.recv.trailers().await {
                    Ok(trailers) => trailers,
                    Err(_) => return Err(Failure::ClientGone),
                };
                if self.framing == BodyFraming::Chunked {
                    push_last_chunk(&mut self.out, trailers.as_ref());
                }
                self.read_all = true;
                Ok(())
            }
            Err(_) => Err(Failure::Client(Rejection::BodyTimeout)),
        }
    }
}

fn closed() -> Failure {
    Failure::Backend {
        timed_out: false,
        dead_reuse: false,
    }
}

/// The state of one stream while it runs.
struct Run<'r> {
    route: &'r Route,
    /// The HTTP/1 head for the backend.
    head: Vec<u8>,
    head_method: bool,
    idempotent: bool,
    body: RequestBody,
    record: Record<'r>,
    grpc: bool,
}

impl Run<'_> {
    async fn with_backend(&mut self, chosen: Chosen, respond: &mut SendResponse<Bytes>) -> Turn {
        let Chosen {
            attempt,
            mut upstream,
            mut reused,
            affinity,
        } = chosen;
        let backend = attempt.backend().clone();
        let mut upstream_in = BytesMut::with_capacity(READ_CHUNK);
        // A body is never in hand whole before it is sent (it is not kept), so only a
        // request without one can be sent again.
        let resend = may_resend(self.idempotent, self.body.framing == BodyFraming::Empty);
        let (response, headers) = loop {
            match self
                .exchange(&mut upstream, &mut upstream_in, respond, affinity.as_ref())
                .await
            {
                Ok(answer) => break answer,
                // A kept connection the backend had closed: once more on a fresh one.
                Err(failure) => match next_try(failure, reused, resend) {
                    NextTry::FreshConnection => {
                        if !redial(self.route, &backend, &mut upstream, &mut upstream_in).await {
                            return Turn::Retry(attempt);
                        }
                        reused = false;
                    }
                    NextTry::OtherBackend => {
                        upstream_in.clear();
                        return Turn::Retry(attempt);
                    }
                    NextTry::GiveUp(failure) => {
                        self.record.backend = Some(backend);
                        return Turn::Failed(failure);
                    }
                },
            }
        };
        self.record.answered(&backend, response.status);
        let grpc = self.grpc || is_grpc(&headers);
        let mut headers = headers;
        if grpc {
            // A gRPC response the backend cuts short ends with trailers, which a declared
            // length would make a protocol error; HTTP/2's frames delimit the body anyway.
            headers.remove(http::header::CONTENT_LENGTH);
        }
        let mut answer = http::Response::new(());
        *answer.status_mut() =
            http::StatusCode::from_u16(response.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
        *answer.headers_mut() = headers;
        let empty = response.framing == crate::http::relay::framing::Framing::Empty;
        let send = match respond.send_response(answer, empty) {
            Ok(send) => send,
            Err(_) => {
                self.record.failed(Failure::ClientGone);
                return Turn::Done;
            }
        };
        let relayed = if empty {
            Ok(())
        } else {
            self.relay_body(&response, &mut upstream, &mut upstream_in, send, grpc)
                .await
        };
        drop(attempt); // the lease: the backend's in-flight count
        match relayed {
            Ok(()) => {
                if response.reusable && self.body.is_done() && upstream_in.is_empty() {
                    let idle_for = self.route.port.settings.timeouts.upstream_idle;
                    idle::put(backend.address, upstream, idle_for);
                }
            }
            Err(failure) => self.record.failed(failure),
        }
        Turn::Done
    }

    /// Sends the request (head, and body as it comes) and reads the response head, relaying
    /// 1xx heads to the client on the way; the head and the fields for the client.
    async fn exchange(
        &mut self,
        upstream: &mut TcpStream,
        upstream_in: &mut BytesMut,
        respond: &mut SendResponse<Bytes>,
        affinity: Option<&AffinityHeader>,
    ) -> Result<(Response, http::HeaderMap), Failure> {
        let timeouts = self.route.port.settings.timeouts;
        let (mut from_backend, mut to_backend) = upstream.split();
        if to_backend.write_all(&self.head).await.is_err() {
            return Err(Failure::Backend {
                timed_out: false,
                dead_reuse: true,
            });
        }
        let mut headers = http::HeaderMap::new();
        let exchange = Exchange {
            head_method: self.head_method,
            http10: false,
            keep_alive: false,
            affinity,
        };
        let mut answer_by = None;
        loop {
            let body_open = !self.body.is_done();
            // The backend's time to answer runs once it has the whole request.
            if !body_open && answer_by.is_none() {
                answer_by = Some(Instant::now() + timeouts.upstream_read);
            }
            let answer_timer = async {
                match answer_by {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            upstream_in.reserve(READ_CHUNK);
            tokio::select! {
                biased;
                read = from_backend.read_buf(upstream_in) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        let dead_reuse = upstream_in.is_empty();
                        return Err(Failure::Backend { timed_out: false, dead_reuse });
                    }
                    let Some(response) = response::parse(upstream_in, &exchange, &mut headers)
                        .map_err(|_| Failure::BadResponse)?
                    else {
                        continue;
                    };
                    upstream_in.advance(response.head_len);
                    if !response.informational {
                        return Ok((response, headers));
                    }
                    let mut informational = http::Response::new(());
                    *informational.status_mut() = http::StatusCode::from_u16(response.status)
                        .unwrap_or(http::StatusCode::CONTINUE);
                    *informational.headers_mut() = std::mem::take(&mut headers);
                    let _ = respond.send_informational(informational);
                }
                () = answer_timer => {
                    return Err(Failure::Backend { timed_out: true, dead_reuse: false });
                }
                reset = poll_fn(|cx| respond.poll_reset(cx)) => {
                    tracing::debug!(reason = ?reset.ok(), "client reset the stream");
                    return Err(Failure::ClientGone);
                }
                step = self.body.step(&mut to_backend, timeouts.client_idle, timeouts.upstream_read), if body_open => {
                    step?;
                }
            }
        }
    }

    /// Relays the response body (its start is in `upstream_in`) as DATA frames, then the
    /// trailers of a chunked body; a failure is the client's going away, or the body's being
    /// cut (the stream then ends as the module says).
    async fn relay_body(
        &mut self,
        response: &Response,
        upstream: &mut TcpStream,
        upstream_in: &mut BytesMut,
        mut send: SendStream<Bytes>,
        grpc: bool,
    ) -> Result<(), Failure> {
        let limits = &self.route.port.settings.limits;
        let timeouts = self.route.port.settings.timeouts;
        let mut body =
            Body::new(response.framing, limits.max_header_bytes as usize).keep_trailers();
        let mut data = BytesMut::new();
        loop {
            let taken = match body.accept(upstream_in, |range| {
                data.extend_from_slice(&upstream_in[range]);
            }) {
                Ok(taken) => taken,
                Err(_) => return Err(cut(&mut send, grpc)),
            };
            upstream_in.advance(taken);
            let done = body.is_done();
            let trailers = if done {
                body.take_trailers()
                    .map(|lines| super::request::parse_trailers(&lines))
            } else {
                None
            };
            let end = done && trailers.is_none();
            if !data.is_empty() || end {
                let chunk = data.split().freeze();
                self.record.bytes_sent += chunk.len() as u64;
                send_data(&mut send, chunk, end, Some(timeouts.client_idle)).await?;
            }
            if let Some(trailers) = trailers {
                send.send_trailers(trailers)
                    .map_err(|_| Failure::ClientGone)?;
            }
            if done {
                return Ok(());
            }
            upstream_in.reserve(READ_CHUNK);
            let read_by = Instant::now() + timeouts.upstream_read;
            let read = tokio::select! {
                biased;
                read = upstream.read_buf(upstream_in) => read,
                () = tokio::time::sleep_until(read_by) => return Err(cut(&mut send, grpc)),
                reset = poll_fn(|cx| send.poll_reset(cx)) => {
                    tracing::debug!(reason = ?reset.ok(), "client reset the stream");
                    return Err(Failure::ClientGone);
                }
            };
            match read {
                Ok(0) if body.until_close() => {
                    send_data(&mut send, Bytes::new(), true, Some(timeouts.client_idle)).await?;
                    return Ok(());
                }
                Ok(0) | Err(_) => return Err(cut(&mut send, grpc)),
                Ok(_) => {}
            }
        }
    }
}
