//! An HTTP/2 stream proxied to an h2c backend: the request's head made for the backend
//! (connection fields dropped, forwarding headers set by policy), the stream's body and trailers
//! as [`ClientBody`], and its answer as [`ClientAnswer`], for the one h2c exchange
//! ([`crate::http::h2c::forward`]). A response the backend cuts short ends as the HTTP/2 server
//! ends every cut response ([`super::respond::cut`]: `grpc-status: 14` for gRPC).

use std::future::poll_fn;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::request::Parts;
use lb_policy::PickContext;

use super::respond::{answer, cut};
use crate::http::exchange::{is_idempotent, Failure, Record};
use crate::http::forwarding::forwarded;
use crate::http::h2c::forward::{self, is_grpc, send_data, ClientAnswer, ClientBody};
use crate::route::Route;

/// Proxies the stream (`parts`, `recv`) of a client at `peer` to an h2c backend of `route`,
/// picked by `cx`; `record` gets the outcome.
pub(super) async fn forward(
    route: &Route,
    cx: &PickContext<'_>,
    peer: SocketAddr,
    parts: &Parts,
    mut recv: RecvStream,
    respond: SendResponse<Bytes>,
    record: &mut Record<'_>,
) {
    let request = backend_request(route, peer, parts);
    let mut answer = StreamAnswer {
        respond,
        send: None,
        continued: false,
    };
    let client = forward::Client {
        request: &request,
        idempotent: is_idempotent(parts.method.as_str().as_bytes()),
        grpc: is_grpc(&parts.headers),
        body: &mut recv,
        answer: &mut answer,
    };
    forward::forward(route, cx, client, record).await;
}

/// The request for the backend: the client's, with connection-specific fields dropped and the
/// forwarding headers set by policy.
fn backend_request(route: &Route, peer: SocketAddr, parts: &Parts) -> http::Request<()> {
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
        Some(peer.ip()),
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

impl ClientBody for RecvStream {
    fn is_empty(&self) -> bool {
        self.is_end_stream()
    }

    async fn data(&mut self) -> Option<Result<Bytes, Failure>> {
        Some(
            RecvStream::data(self)
                .await?
                .map_err(|_| Failure::ClientGone),
        )
    }

    fn consumed(&mut self, len: usize) {
        // The client's window opens as the backend takes the body.
        let _ = self.flow_control().release_capacity(len);
    }

    async fn trailers(&mut self) -> Result<Option<http::HeaderMap>, Failure> {
        RecvStream::trailers(self)
            .await
            .map_err(|_| Failure::ClientGone)
    }
}

/// The stream's answer: the response handle, then the body's stream once the head is sent.
struct StreamAnswer {
    respond: SendResponse<Bytes>,
    send: Option<SendStream<Bytes>>,
    /// The client was told to send its body.
    continued: bool,
}

impl ClientAnswer for StreamAnswer {
    async fn proceed(&mut self) -> Result<(), Failure> {
        if !std::mem::replace(&mut self.continued, true) {
            let mut informational = http::Response::new(());
            *informational.status_mut() = http::StatusCode::CONTINUE;
            self.respond
                .send_informational(informational)
                .map_err(|_| Failure::ClientGone)?;
        }
        Ok(())
    }

    async fn head(&mut self, response: http::Response<()>, end: bool) -> Result<(), Failure> {
        let send = self
            .respond
            .send_response(response, end)
            .map_err(|_| Failure::ClientGone)?;
        self.send = Some(send);
        Ok(())
    }

    async fn data(&mut self, data: Bytes, within: Duration) -> Result<(), Failure> {
        match &mut self.send {
            Some(send) => send_data(send, data, false, Some(within)).await,
            None => Err(Failure::ClientGone),
        }
    }

    async fn end(&mut self, trailers: Option<http::HeaderMap>) -> Result<(), Failure> {
        let Some(send) = &mut self.send else {
            return Err(Failure::ClientGone);
        };
        let ended = match trailers {
            Some(trailers) => send.send_trailers(trailers),
            None => send.send_data(Bytes::new(), true),
        };
        ended.map_err(|_| Failure::ClientGone)
    }

    async fn gone(&mut self) {
        // A reset (or the connection's end) before or after the head.
        let _ = poll_fn(|cx| match &mut self.send {
            Some(send) => send.poll_reset(cx),
            None => self.respond.poll_reset(cx),
        })
        .await;
    }

    async fn cut(&mut self, grpc: bool) -> Failure {
        match &mut self.send {
            Some(send) => cut(send, grpc),
            None => Failure::CutResponse,
        }
    }

    async fn failed(&mut self, record: &Record<'_>, grpc: bool) {
        answer(&mut self.respond, record, grpc);
    }
}
