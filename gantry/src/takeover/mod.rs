//! Taking over from a running Gantry without losing a connection, a datagram or a flow, and
//! refusing to start beside one by accident.
//!
//! Every `gantry run` holds a **control socket**: an abstract Unix socket, `@gantry` unless
//! `--control-socket` names another. A second `gantry run` finds it held and stops at once,
//! naming the process that holds it, unless it was asked to take over (`--takeover`, or as the
//! child SIGUSR2 starts). Then the two processes speak over it ([`wire`]):
//!
//! 1. the old process (the *predecessor*, [`predecessor`]) says who it is, and on request
//!    hands over every socket it serves on: each TCP port's listening socket, each UDP port's
//!    socket and the admin listener (duplicates, `SCM_RIGHTS`);
//! 2. the new process (the *successor*, [`successor`]) starts its configuration on them: a
//!    port whose address matches a handed-over socket serves on that very socket (the same
//!    accept queue; the same UDP receive queue) instead of binding a second one beside it;
//!    TCP ports accept at once (both processes accept from the one queue until the old one
//!    stops), UDP ports do not read yet;
//! 3. the successor reports ready, naming its UDP ports; the predecessor stops reading each,
//!    stops its flows and hands them over with their upstream sockets
//!    ([`lb_core::udp::transfer`]); the successor adopts those whose backend it has, and from then
//!    on reads the ports itself. Datagrams that arrive meanwhile wait in the socket's queue;
//! 4. the predecessor gives up the control socket, says it is done, and drains: it accepts no
//!    more (the sockets live on in the successor), finishes what it has, keeps its idle
//!    keep-alive connections until their next request (answered with `Connection: close`) and
//!    exits; the successor takes the control socket for the next upgrade.
//!
//! Envoy's hot restart passes sockets the same way but leaves the old process reading a UDP
//! socket through its drain, forwarding datagrams of flows it does not know to the new one;
//! HAProxy gives each QUIC connection a connected socket of its own that the old process keeps.
//! Handing the flows over instead ends the old process's part in UDP at once: no datagram
//! takes an extra hop, the old process does not linger for flows, and a backend sees its flows
//! go on from the same source port.
//!
//! A successor that fails before it reports ready changes nothing: the predecessor keeps
//! serving (the successor's copies of its sockets close with it).

pub mod predecessor;
pub mod successor;
pub mod wire;

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use lb_core::sockets::SocketKind;
use lb_core::udp::FlowState;

/// The control socket's name unless `--control-socket` says otherwise (abstract: `@gantry`).
pub const DEFAULT_CONTROL_SOCKET: &str = "gantry";

/// How long a successor may take to serve: loading the configuration, compiling plugins that
/// are not in the cache, and binding. A successor still starting then is given up.
pub const SUCCESSOR_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// The messages of the takeover, in the order they go.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Message {
    /// Predecessor → anyone who connects: who holds the control socket.
    Hello {
        pid: u32,
        version: String,
        config: String,
    },
    /// Successor → predecessor: hand everything over.
    Takeover,
    /// Predecessor → successor: sockets, one descriptor attached for each, in order.
    Sockets {
        sockets: Vec<(SocketKind, SocketAddr)>,
    },
    /// Predecessor → successor: no more sockets.
    SocketsEnd,
    /// Successor → predecessor: it serves; these are its UDP ports.
    Ready { udp: Vec<SocketAddr> },
    /// Predecessor → successor: flows of the UDP port bound to `port`, one upstream socket
    /// attached for each, in order.
    Flows {
        port: SocketAddr,
        flows: Vec<FlowState>,
    },
    /// Predecessor → successor: everything is handed over; the control socket is free.
    Done,
    /// Predecessor → successor: no takeover now, and why.
    Refused { reason: String },
}

/// Why a takeover (or a start) did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    /// The control connection failed.
    #[error(transparent)]
    Wire(#[from] wire::WireError),
    /// Another Gantry holds the control socket: starting beside it would share its ports.
    #[error(
        "another gantry (pid {pid}, configuration {config}) already serves here: it holds the control socket @{name}. \
         A second one would share its ports. Stop it, or start this one with --takeover to take its ports over \
         (or give this one a --control-socket of its own)"
    )]
    AnotherGantry {
        /// Its process id (as this process sees it; 0 if not visible).
        pid: u32,
        /// Its configuration file.
        config: String,
        /// The control socket's name.
        name: String,
    },
    /// The control socket could not be made.
    #[error("cannot hold the control socket @{name}: {source}")]
    Control {
        /// The control socket's name.
        name: String,
        /// Why.
        source: std::io::Error,
    },
    /// The predecessor said no.
    #[error("the running gantry refused the takeover: {0}")]
    Refused(String),
    /// The successor did not report ready in time.
    #[error("the new process was not ready within {}s", .0.as_secs())]
    NotReady(Duration),
    /// This process could not hand over or adopt what was asked.
    #[error("{0}")]
    Local(std::io::Error),
}
