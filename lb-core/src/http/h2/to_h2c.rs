//! One HTTP/2 stream proxied to an h2c backend (gRPC): the request goes as an HTTP/2 stream on
//! the worker's connection to the backend ([`crate::http::h2c`]), its body and trailers as they
//! come, while the response's head, body and trailers come back the same way: both directions
//! flow at once, so client, server and bidirectional streaming all pass. Each direction waits
//! for the receiver's flow-control window instead of buffering.
//!
//! The exchange's rules hold ([`crate::http::exchange`]): a failed connect goes to another
//! backend; a stream the backend refuses (`REFUSED_STREAM`: nothing was processed) too, whatever
//! the method; a stream that fails before its answer, when the request is idempotent and had
//! no body. The response head must come within `upstream_read` of the request's end. A
//! response body has no timeout between frames when it is gRPC (a stream may rightly be quiet
//! for long; gRPC deadlines are the client's), and `upstream_read` otherwise.

use std::future::poll_fn;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, RecvStream, SendStream};
use http::request::Parts;
use lb_policy::{PickContext, ResponseHeader as AffinityHeader};
use tokio::time::Instant;

use super::stream::{answer, cut, is_grpc, send_data};
use crate::http::exchange::{is_idempotent, may_resend, Failure, Record};
use crate::http::forwarding::forwarded;
use crate::http::h2c;
use crate::pool::attempt::{Attempts, NoBackend};
use crate::route::Route;

/// The client's side of the stream.
pub(super) struct ClientStream<'p> {
    pub(super) peer: SocketAddr,
    pub(super) parts: &'p Parts,
    pub(super) recv: RecvStream,
    pub(super) respond: SendResponse<Bytes>,
}

/// Proxies the stream to an h2c backend of `route`, picked by `cx`; `record` gets the outcome.
pub(super) async fn forward(
    route: &Route,
    cx: &PickContext<'_>,
    mut client: ClientStream<'_>,
    record: &mut Record<'_>,
) {
    let grpc = is_grpc(&client.parts.headers);
    let body_empty = client.recv.is_end_stream();
    let resend = may_resend(
        is_idempotent(client.parts.method.as_str().as_bytes()),
        body_empty,
    );
    let connect = route.port.settings.timeouts.connect;
    let mut attempts = Attempts::new();
    let failure = loop {
        let mut attempt = match attempts.next(&route.pool, cx) {
            Ok(attempt) => attempt,
            Err(no) => break Some(Failure::NoBackend(no)),
        };
        let affinity = attempt.response_header.take();
        let backend = attempt.backend().clone();
        let (send, fresh) = match h2c::ready(&backend, connect).await {
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
        let request = backend_request(route, &client);
        record.backend = Some(backend);
        // Counted however the exchange ends (the upload's future may be dropped unfinished).
        let bytes_up = AtomicU64::new(0);
        let turn = exchange(
            route,
            send,
            request,
            &mut client,
            affinity.as_ref(),
            record,
            &bytes_up,
        )
        .await;
        record.bytes_received += bytes_up.load(Ordering::Relaxed);
        let early = match turn {
            Ok(()) => break None,
            Err(Early::Answered(failure)) => break failure,
            Err(early) => early,
        };
        // A refused stream processed nothing; one that failed may be sent again by the rule.
        let retry = match early {
            Early::Refused => body_empty,
            Early::Failed(Failure::Backend {
                timed_out: false, ..
            }) => resend,
            _ => false,
        };
        if !retry {
            break Some(match early {
                Early::Failed(failure) => failure,
                _ => closed(),
            });
        }
        // The attempt loop tells the backend's observers.
        if !attempts.failed(&route.pool, attempt, lb_policy::Outcome::ConnectFailed) {
            break Some(Failure::NoBackend(NoBackend::Exhausted));
        }
    };
    record.retries = attempts.failures();
    if let Some(failure) = failure {
        let answered = record.status.is_some();
        record.failed(failure);
        if !answered {
            answer(&mut client.respond, record, grpc);
        }
    }
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

/// The request for the backend: the client's, with connection-specific fields dropped and the
/// forwarding headers set by policy.
fn backend_request(route: &Route, client: &ClientStream<'_>) -> http::Request<()> {
    let parts = client.parts;
    let mut headers = parts.headers.clone();
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
    if headers
        .get(http::header::TE)
        .is_some_and(|te| te.as_bytes() != b"trailers")
    {
        headers.remove(http::header::TE);
    }
    let prior_for: Vec<String> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok().map(str::to_owned))
        .collect();
    let prior_proto = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let set = forwarded(
        route,
        Some(client.peer.ip()),
        prior_for.iter().map(String::as_str),
        prior_proto.as_deref(),
    );
    headers.remove("x-forwarded-for");
    if let Some(value) = set
        .forwarded_for
        .and_then(|v| http::HeaderValue::try_from(v).ok())
    {
        headers.insert("x-forwarded-for", value);
    }
    if let Ok(value) = http::HeaderValue::try_from(set.forwarded_proto) {
        headers.insert("x-forwarded-proto", value);
    }
    let mut uri = http::Uri::builder().scheme("http");
    if let Some(authority) = parts.uri.authority().cloned().or_else(|| {
        let host = parts.headers.get(http::header::HOST)?;
        http::uri::Authority::try_from(host.as_bytes()).ok()
    }) {
        headers.remove(http::header::HOST);
        uri = uri.authority(authority);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut request = http::Request::new(());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = uri
        .path_and_query(path)
        .build()
        .unwrap_or_else(|_| http::Uri::from_static("/"));
    *request.headers_mut() = headers;
    request
}

/// Sends `request` on `send`, streams the client's body up and the answer down.
async fn exchange(
    route: &Route,
    mut send: h2::client::SendRequest<Bytes>,
    request: http::Request<()>,
    client: &mut ClientStream<'_>,
    affinity: Option<&AffinityHeader>,
    record: &mut Record<'_>,
    bytes_up: &AtomicU64,
) -> Result<(), Early> {
    let timeouts = route.port.settings.timeouts;
    let body_empty = client.recv.is_end_stream();
    let (response, mut upstream) = match send.send_request(request, body_empty) {
        Ok(pair) => pair,
        Err(err) => return Err(early(&err)),
    };
    let mut uploaded = body_empty;
    let upload = upload(&mut client.recv, &mut upstream, bytes_up);
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
                    Err(Upload::ClientGone) => return Err(Early::Answered(Some(Failure::ClientGone))),
                    // The backend stopped taking the body; its answer says why.
                    Err(Upload::BackendGone) => answer_by = Some(Instant::now() + timeouts.upstream_read),
                }
            }
            () = timer => return Err(Early::Failed(Failure::Backend { timed_out: true, dead_reuse: false })),
            _ = poll_fn(|cx| client.respond.poll_reset(cx)) => return Err(Early::Answered(Some(Failure::ClientGone))),
        }
    };
    let head = match head {
        Ok(head) => head,
        Err(err) => return Err(early(&err)),
    };
    let (mut parts, mut body) = head.into_parts();
    if let Some(header) = affinity {
        parts
            .headers
            .append(header.name.clone(), header.value.clone());
    }
    let backend = record.backend.clone();
    if let Some(backend) = &backend {
        record.answered(backend, parts.status.as_u16());
    }
    let grpc = is_grpc(&client.parts.headers) || is_grpc(&parts.headers);
    let ended = body.is_end_stream();
    let mut down = match client
        .respond
        .send_response(http::Response::from_parts(parts, ()), ended)
    {
        Ok(down) => down,
        Err(_) => return Err(Early::Answered(Some(Failure::ClientGone))),
    };
    if ended {
        return Ok(());
    }
    // The body down, while whatever is left of the request goes up.
    let stall = (!grpc).then_some(timeouts.upstream_read);
    let download = download(&mut body, &mut down, timeouts.client_idle, stall, grpc);
    tokio::pin!(download);
    let result = loop {
        tokio::select! {
            biased;
            done = &mut download => break done,
            sent = &mut upload, if !uploaded => {
                uploaded = true;
                if let Err(Upload::ClientGone) = sent {
                    break Err(Some(Failure::ClientGone));
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
    ClientGone,
    BackendGone,
}

/// Sends the client's body and trailers to the backend as they come.
async fn upload(
    recv: &mut RecvStream,
    up: &mut SendStream<Bytes>,
    bytes: &AtomicU64,
) -> Result<(), Upload> {
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                let len = data.len();
                send_data(up, data, false, None)
                    .await
                    .map_err(|_| Upload::BackendGone)?;
                let _ = recv.flow_control().release_capacity(len);
                bytes.fetch_add(len as u64, Ordering::Relaxed);
            }
            Some(Err(_)) => {
                up.send_reset(Reason::CANCEL);
                return Err(Upload::ClientGone);
            }
            None => {
                let sent = match recv.trailers().await {
                    Ok(Some(trailers)) => up.send_trailers(trailers),
                    Ok(None) => up.send_data(Bytes::new(), true),
                    Err(_) => {
                        up.send_reset(Reason::CANCEL);
                        return Err(Upload::ClientGone);
                    }
                };
                return sent.map_err(|_| Upload::BackendGone);
            }
        }
    }
}

/// Sends the backend's body and trailers to the client as they come; the body bytes sent, or
/// the failure (`None`: the client went away, nothing to hold against the backend).
async fn download(
    body: &mut RecvStream,
    down: &mut SendStream<Bytes>,
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
            _ = poll_fn(|cx| down.poll_reset(cx)) => return Err(Some(Failure::ClientGone)),
        };
        match next {
            Some(Some(Ok(data))) => {
                let len = data.len();
                send_data(down, data, false, Some(client_idle))
                    .await
                    .map_err(Some)?;
                let _ = body.flow_control().release_capacity(len);
                sent += len as u64;
            }
            Some(None) => {
                let ended = match body.trailers().await {
                    Ok(Some(trailers)) => down.send_trailers(trailers),
                    Ok(None) => down.send_data(Bytes::new(), true),
                    Err(_) => return Err(Some(cut(down, grpc))),
                };
                return ended.map(|()| sent).map_err(|_| Some(Failure::ClientGone));
            }
            // The backend reset the stream or its connection broke, or it stalled.
            Some(Some(Err(_))) | None => return Err(Some(cut(down, grpc))),
        }
    }
}
