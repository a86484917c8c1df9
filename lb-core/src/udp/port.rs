//! One UDP address and port: its socket, the flows it carries and the listener whose route
//! takes its new flows. There is one socket per address and port in a process, whatever
//! listeners come and go on it: with two sockets sharing a port, the kernel would hand each
//! new client to either, and a draining one would drop what it was given. So a port re-added
//! at the address of one still draining takes that socket over ([`UdpPorts::find`] at the
//! build of a reload, `UdpPort::serve`, in [`super::relay`], at its commit), and the socket closes only once no
//! listener holds it ([`PortHold`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::flows::{FlowOwner, FlowTable};

/// A UDP socket and the flows it carries.
pub(crate) struct UdpPort {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) local: SocketAddr,
    pub(crate) flows: FlowTable,
    /// The listener that takes new flows (it may be draining: then none are taken).
    pub(super) serving: ArcSwapOption<FlowOwner>,
    /// Listeners holding the port; 0 once closed, for good.
    holders: Mutex<usize>,
    /// Cancelled when the last holder lets go: the receive loop and every flow end.
    pub(crate) closed: CancellationToken,
    /// Whether the receive loop may read: a socket handed over by another process is read only
    /// once that process has stopped reading it and its flows are adopted.
    gate: watch::Sender<bool>,
    /// Cancelled when the socket is handed over: the receive loop stops for good.
    pub(crate) stop_reading: CancellationToken,
    /// The receive loop, once started.
    pub(super) receiving: Mutex<Option<JoinHandle<()>>>,
    /// The flows' tasks.
    pub(crate) tasks: TaskTracker,
}

impl UdpPort {
    /// A port on `socket`, held by its first listener (the returned hold).
    pub(crate) fn open(socket: UdpSocket) -> std::io::Result<PortHold> {
        Self::open_with_gate(socket, true)
    }

    /// A port on a socket handed over by another process: read only once
    /// [`UdpPort::open_gate`] is called.
    pub(crate) fn open_handed_over(socket: UdpSocket) -> std::io::Result<PortHold> {
        Self::open_with_gate(socket, false)
    }

    fn open_with_gate(socket: UdpSocket, open: bool) -> std::io::Result<PortHold> {
        let local = socket.local_addr()?;
        Ok(PortHold(Arc::new(UdpPort {
            socket: Arc::new(socket),
            local,
            flows: FlowTable::new(),
            serving: ArcSwapOption::empty(),
            holders: Mutex::new(1),
            closed: CancellationToken::new(),
            gate: watch::channel(open).0,
            stop_reading: CancellationToken::new(),
            receiving: Mutex::new(None),
            tasks: TaskTracker::new(),
        })))
    }

    /// The listener taking new flows now.
    pub(crate) fn serving(&self) -> Option<Arc<FlowOwner>> {
        self.serving.load_full()
    }

    /// Lets the receive loop read.
    pub(crate) fn open_gate(&self) {
        self.gate.send_replace(true);
    }

    /// Waits until the receive loop may read; `false` if the port closed or stopped reading
    /// first.
    pub(crate) async fn may_read(&self) -> bool {
        let mut gate = self.gate.subscribe();
        tokio::select! {
            opened = gate.wait_for(|open| *open) => opened.is_ok(),
            () = self.closed.cancelled() => false,
            () = self.stop_reading.cancelled() => false,
        }
    }

    /// Stops the receive loop for good (the socket was handed to another process, which reads
    /// it from now on) and waits until it has.
    pub(crate) async fn stop_receiving(&self) {
        self.stop_reading.cancel();
        self.receive_loop_ended().await;
    }

    /// Waits for the receive loop (told to stop) to return.
    async fn receive_loop_ended(&self) {
        let receiving = self
            .receiving
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(task) = receiving {
            let _ = task.await;
        }
    }

    /// Ends the flows `owner` owns (its drain ran out of time).
    pub(crate) fn end_flows_of(&self, owner: &Arc<FlowOwner>) {
        for flow in self.flows.snapshot() {
            if flow.is_owned_by(owner) {
                flow.done.cancel();
            }
        }
    }

    /// Ends `owner`'s flows that have been answered and quiet for `quiet` (nothing is in
    /// flight on them); returns the earliest moment another of its flows can become so.
    pub(crate) fn end_quiet_flows_of(
        &self,
        owner: &Arc<FlowOwner>,
        quiet: Duration,
    ) -> Option<Instant> {
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for flow in self.flows.snapshot() {
            if !flow.is_owned_by(owner) {
                continue;
            }
            match flow.quiet_at(quiet) {
                Some(at) if at <= now => flow.done.cancel(),
                Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                None => {}
            }
        }
        next
    }

    /// Takes one more hold, unless the port has closed.
    fn hold(self: &Arc<Self>) -> Option<PortHold> {
        let mut holders = self.holders.lock().unwrap_or_else(|p| p.into_inner());
        if *holders == 0 {
            return None;
        }
        *holders += 1;
        Some(PortHold(self.clone()))
    }
}

/// A listener's hold on a [`UdpPort`]: the port stays open while one exists.
pub(crate) struct PortHold(Arc<UdpPort>);

impl PortHold {
    pub(crate) fn port(&self) -> &Arc<UdpPort> {
        &self.0
    }

    /// Lets go; when this was the last hold, the port closes and this returns once its
    /// receive loop and flows have ended (the socket is closed then).
    pub(crate) async fn release(self) {
        let port = self.0.clone();
        drop(self);
        if !port.closed.is_cancelled() {
            return;
        }
        port.receive_loop_ended().await;
        port.tasks.close();
        port.tasks.wait().await;
    }
}

impl Drop for PortHold {
    fn drop(&mut self) {
        let mut holders = self.0.holders.lock().unwrap_or_else(|p| p.into_inner());
        *holders = holders.saturating_sub(1);
        if *holders == 0 {
            self.0.closed.cancel();
        }
    }
}

/// The UDP ports of one process, by bound address.
#[derive(Default)]
pub(crate) struct UdpPorts(Mutex<HashMap<SocketAddr, Weak<UdpPort>>>);

impl UdpPorts {
    /// A hold on the open port bound to `address`, if there is one (a port 0 never matches:
    /// it asks for a new socket).
    pub(crate) fn find(&self, address: SocketAddr) -> Option<PortHold> {
        if address.port() == 0 {
            return None;
        }
        let mut ports = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let port = ports.get(&address)?.upgrade();
        match port.and_then(|port| port.hold()) {
            Some(hold) => Some(hold),
            None => {
                ports.remove(&address);
                None
            }
        }
    }

    /// The open port bound to `address`, if there is one.
    pub(crate) fn get(&self, address: SocketAddr) -> Option<Arc<UdpPort>> {
        let ports = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ports
            .get(&address)
            .and_then(Weak::upgrade)
            .filter(|port| !port.closed.is_cancelled())
    }

    /// Every open port, serving or draining.
    pub(crate) fn all(&self) -> Vec<Arc<UdpPort>> {
        let ports = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ports
            .values()
            .filter_map(Weak::upgrade)
            .filter(|port| !port.closed.is_cancelled())
            .collect()
    }

    pub(super) fn register(&self, port: &Arc<UdpPort>) {
        let mut ports = self.0.lock().unwrap_or_else(|p| p.into_inner());
        ports.retain(|_, port| port.strong_count() > 0);
        ports.insert(port.local, Arc::downgrade(port));
    }
}
