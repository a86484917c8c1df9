//! Gantry's own HTTP/1.1 proxy path, for every HTTP/1 request ([`to_h2c`] carries those for
//! h2c backends as HTTP/2). Where a general proxy builds a session, two header maps and two
//! channels per request and runs its halves as tasks, this path parses
//! heads with `httparse` in place, forwards the client's header bytes with only Gantry's edits
//! ([`request`], [`response`]), relays bodies byte for byte under exact framing ([`framing`]),
//! and keeps backend connections per worker thread ([`idle`]), all within the client
//! connection's task: no task, lock or channel per request.
//!
//! It keeps every guarantee of the HTTP path: the head limits and framing refusals (of the head
//! reader, and its own for what HTTP/1 forbids forwarding), hop-by-hop handling, the
//! forwarding-header policy, affinity headers, the attempt loop and its health reports, the
//! 502/503/504 rules, metrics and the access log. Pipelined requests are answered in order,
//! since the client's buffer carries over from one request to the next.

pub mod forward;
pub mod framing;
pub mod idle;
pub mod request;
pub mod response;
pub mod to_h2c;

use tokio::io::{AsyncWrite, AsyncWriteExt};

pub use self::forward::{relay, After, Buffers, Client};
use crate::http::head::{close_response, refusal_status};
use crate::metrics::Rejection;
use crate::route::Route;

/// Room made at once for a head Gantry writes (most fit), so that writing one part after
/// another does not grow the buffer step by step: the buffers start empty on each request of
/// a connection that idled ([`Buffers::release_while_idle`]).
const HEAD_ROOM: usize = 1024;

/// Refuses a request (counted under `why`), answering with its status, and closes.
pub async fn refuse<C: AsyncWrite + Unpin>(route: &Route, client: &mut C, why: Rejection) {
    route.metrics.rejected(why);
    let key = &route.port.key;
    tracing::debug!(service = %key.service, port = %key.port, reason = why.label(), "request refused");
    if client
        .write_all(&close_response(refusal_status(why)))
        .await
        .is_ok()
    {
        let _ = client.flush().await;
    }
    let _ = client.shutdown().await;
}
