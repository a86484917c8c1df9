//! The HTTP/2 server's limits, set here explicitly rather than inherited from pingora's and
//! h2's defaults, so that what one connection may hold is written down in one place (and in
//! `docs/configuration.md`). Each bounds what a single client can make Gantry keep or do:
//!
//! - streams open at once, and the request header list (the port's `max_header_bytes`);
//! - flow-control windows: what a client may send before Gantry has read it is at most the
//!   connection window, whatever the number of streams;
//! - what Gantry buffers towards a slow reader, per stream;
//! - streams a client resets: resets of streams not yet accepted (HTTP/2 rapid reset,
//!   CVE-2023-44487), and streams Gantry itself had to reset for the client's errors, both end
//!   the connection with `ENHANCE_YOUR_CALM` once past their bound.
//!
//! h2 bounds the rest itself: CONTINUATION frames per header block (about the header list
//! over the frame size, so a flood ends with `ENHANCE_YOUR_CALM`), empty DATA frames, and one
//! unanswered SETTINGS or PING at a time (it reads no further until the answer is written, so
//! a flood of them only meets TCP's backpressure).

use std::time::Duration;

use h2::server::Builder;

/// Streams a client may have open at once (HAProxy's and Envoy's default is 100, nginx 128).
pub const MAX_CONCURRENT_STREAMS: u32 = 100;
/// Each stream's receive window: RFC 9113's initial 65,535 bytes.
pub const STREAM_WINDOW: u32 = 65_535;
/// The connection's receive window, shared by its streams: what one connection can make
/// Gantry hold of request bodies not yet sent on.
pub const CONNECTION_WINDOW: u32 = 1 << 20;
/// Largest frame payload Gantry accepts: the protocol's minimum, 16 KiB.
pub const MAX_FRAME_SIZE: u32 = 16_384;
/// Bytes buffered per stream for a client that reads slowly.
pub const SEND_BUFFER: usize = 256 * 1024;
/// Streams reset by the client before Gantry accepted them, at once (rapid reset).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 20;
/// Streams Gantry reset because of the client's errors, over the connection's life.
pub const MAX_LOCAL_ERROR_RESETS: usize = 256;
/// Reset streams remembered (to tell late frames on them from protocol errors), and for how
/// long.
pub const MAX_REMEMBERED_RESETS: usize = 50;
/// See [`MAX_REMEMBERED_RESETS`].
pub const RESET_MEMORY: Duration = Duration::from_secs(1);

/// The HTTP/2 server settings for listeners whose header lists are bounded by
/// `max_header_bytes` (pingora's `H2Options` is this builder too).
pub fn server_options(max_header_bytes: u32) -> Builder {
    let mut h2 = Builder::new();
    h2.max_concurrent_streams(MAX_CONCURRENT_STREAMS)
        .max_header_list_size(max_header_bytes)
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_frame_size(MAX_FRAME_SIZE)
        .max_send_buffer_size(SEND_BUFFER)
        .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
        .max_concurrent_reset_streams(MAX_REMEMBERED_RESETS)
        .reset_stream_duration(RESET_MEMORY);
    h2
}
