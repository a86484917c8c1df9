//! How the HTTP/2 server ends a stream Gantry could not serve whole, for every backend
//! protocol: the status of a request that got no response (or `REFUSED_STREAM` for a gRPC one
//! that reached no backend, which the client may retry), and a response the backend cut short
//! (`RST_STREAM(INTERNAL_ERROR)`, or for gRPC trailers carrying `grpc-status: 14`).

use bytes::Bytes;
use h2::server::SendResponse;
use h2::{Reason, SendStream};

use crate::http::exchange::{Failure, Record};

/// The gRPC status for "the service is unavailable": the client may retry.
const GRPC_UNAVAILABLE: &str = "14";

/// Answers a request that got no response: its status, or for a gRPC request that reached no
/// backend, `REFUSED_STREAM`.
pub(crate) fn answer(respond: &mut SendResponse<Bytes>, record: &Record<'_>, grpc: bool) {
    let refused = matches!(record.failure, Some(Failure::NoBackend(_))) && grpc;
    match record.status {
        Some(_) if refused => respond.send_reset(Reason::REFUSED_STREAM),
        Some(status) => {
            let mut response = http::Response::new(());
            *response.status_mut() =
                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::BAD_GATEWAY);
            let _ = respond.send_response(response, true);
        }
        None => respond.send_reset(Reason::CANCEL),
    }
}

/// Ends a stream whose response the backend cut short (see the module documentation).
pub(crate) fn cut(send: &mut SendStream<Bytes>, grpc: bool) -> Failure {
    if grpc {
        let mut trailers = http::HeaderMap::new();
        trailers.insert(
            "grpc-status",
            http::HeaderValue::from_static(GRPC_UNAVAILABLE),
        );
        trailers.insert(
            "grpc-message",
            http::HeaderValue::from_static("backend closed the stream"),
        );
        if send.send_trailers(trailers).is_ok() {
            return Failure::CutResponse;
        }
    }
    send.send_reset(Reason::INTERNAL_ERROR);
    Failure::CutResponse
}
