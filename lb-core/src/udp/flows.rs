//! UDP flows: one per client address and port, each bound to one backend through its own
//! connected upstream socket (so replies stay apart), kept in a table sharded by client so
//! worker threads seldom meet on a lock. A flow ends after its idle timeout (`udp_idle` until
//! its backend has answered, `udp_stream_idle` after), at once when its backend leaves the set
//! or stops being healthy (the client's next datagram starts a new flow), or when its owner's
//! drain runs out of time.
//!
//! A flow belongs to the listener that started it (its [`FlowOwner`]): that listener's route
//! judges it, counts it and, when it drains, waits for it. When a port re-added at the same
//! address takes the socket over, a draining owner's flows whose backend the new port also has
//! move to the new owner ([`Flow::move_to`]), as a reload moves a kept port's flows to its new
//! route; the others stay with the draining owner until they end.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::ListenerShared;
use crate::metrics::{PortMetrics, UdpDrop};
use crate::pool::{BackendLease, BackendPool, BackendState};
use crate::route::Route;

/// Shards of the flow table: enough that two workers rarely want the same lock.
const SHARDS: usize = 64;

/// Longest a datagram waits for room in its upstream socket's buffer.
pub(crate) const SEND_WAIT: Duration = Duration::from_millis(10);

/// A listener's share of a UDP port: the route that judges its flows, whether it still takes
/// new ones, and how many it has.
pub(crate) struct FlowOwner {
    shared: Arc<ListenerShared>,
    /// Cancelled when the listener drains: it takes no new flow.
    pub(crate) draining: CancellationToken,
    open: AtomicUsize,
    ended: Notify,
}

impl FlowOwner {
    pub(crate) fn new(shared: Arc<ListenerShared>) -> Self {
        FlowOwner {
            shared,
            draining: CancellationToken::new(),
            open: AtomicUsize::new(0),
            ended: Notify::new(),
        }
    }

    /// The listener's current route.
    pub(crate) fn route(&self) -> Arc<Route> {
        self.shared.route.load_full()
    }

    /// Flows it owns now.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Returns once it owns no flow.
    pub(crate) async fn all_ended(&self) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            // Registered before the count is read, so a flow ending in between still wakes us.
            ended.as_mut().enable();
            if self.open() == 0 {
                return;
            }
            ended.await;
        }
    }

    fn gained(&self, metrics: &PortMetrics) {
        self.open.fetch_add(1, Ordering::AcqRel);
        metrics.flows_active.inc();
    }

    fn lost(&self, metrics: &PortMetrics) {
        metrics.flows_active.dec();
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.ended.notify_waiters();
        }
    }
}

/// Whom a flow belongs to and where it goes; `None` once the flow has ended.
struct Binding {
    owner: Arc<FlowOwner>,
    lease: BackendLease,
    /// The backend set the flow was last found in (a reload that keeps its backend keeps it).
    pool: Arc<BackendPool>,
    /// A PROXY v2 (`DGRAM`) header sent before each datagram, when the owner's port asks.
    header: Option<Arc<[u8]>>,
}

/// What a datagram of a live flow is relayed with.
pub(crate) struct Live {
    pub(crate) route: Arc<Route>,
    pub(crate) backend: Arc<BackendState>,
    header: Option<Arc<[u8]>>,
}

/// One client's flow to one backend.
pub(crate) struct Flow {
    pub(crate) client: SocketAddr,
    binding: Mutex<Option<Binding>>,
    pub(crate) upstream: UdpSocket,
    born: Instant,
    /// Milliseconds after `born` of the last datagram either way (before it, for a flow
    /// handed over by another process).
    last: AtomicI64,
    /// The backend has answered: the flow goes both ways.
    answered: AtomicBool,
    /// Ends the flow.
    pub(crate) done: CancellationToken,
}

impl Flow {
    /// A new flow of `owner` (counted at once) to the backend `lease` holds in `pool`.
    pub(crate) fn new(
        client: SocketAddr,
        owner: Arc<FlowOwner>,
        lease: BackendLease,
        pool: Arc<BackendPool>,
        upstream: UdpSocket,
        header: Option<Vec<u8>>,
        metrics: &PortMetrics,
    ) -> Self {
        owner.gained(metrics);
        Flow {
            client,
            binding: Mutex::new(Some(Binding {
                owner,
                lease,
                pool,
                header: header.map(Arc::from),
            })),
            upstream,
            born: Instant::now(),
            last: AtomicI64::new(0),
            answered: AtomicBool::new(false),
            done: CancellationToken::new(),
        }
    }

    fn binding(&self) -> MutexGuard<'_, Option<Binding>> {
        self.binding.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The route and backend to relay a client datagram with, if the flow may go on: it has
    /// not ended, its backend is healthy and still in its owner's set.
    pub(crate) fn live(&self) -> Option<Live> {
        let mut binding = self.binding();
        let bound = binding.as_mut()?;
        let backend = bound.lease.backend();
        if !backend.is_healthy() {
            return None;
        }
        let route = bound.owner.route();
        if !Arc::ptr_eq(&bound.pool, &route.pool) {
            // A reload: once per flow, look for its backend in the new set.
            if !route.pool.contains(backend.address) {
                return None;
            }
            bound.pool = route.pool.clone();
        }
        Some(Live {
            backend: backend.clone(),
            header: bound.header.clone(),
            route,
        })
    }

    /// The owner's route and the backend, while the flow has not ended (for its replies).
    pub(crate) fn bound(&self) -> Option<(Arc<Route>, Arc<BackendState>)> {
        let binding = self.binding();
        let bound = binding.as_ref()?;
        Some((bound.owner.route(), bound.lease.backend().clone()))
    }

    /// Whether `owner` owns the flow.
    pub(crate) fn is_owned_by(&self, owner: &Arc<FlowOwner>) -> bool {
        self.binding()
            .as_ref()
            .is_some_and(|b| Arc::ptr_eq(&b.owner, owner))
    }

    /// Moves the flow to `owner`, the listener taking its port over from the one that owns it
    /// (which goes away), when `owner`'s `route` has its backend (healthy): the flow goes on
    /// as the new owner's (with the PROXY `header` its port asks for), as a kept port's flow
    /// goes on through a reload. Returns whether it moved.
    pub(crate) fn move_to(
        &self,
        owner: &Arc<FlowOwner>,
        route: &Route,
        header: Option<Vec<u8>>,
    ) -> bool {
        let mut binding = self.binding();
        let Some(bound) = binding.as_mut() else {
            return false;
        };
        if Arc::ptr_eq(&bound.owner, owner) {
            return false;
        }
        let address = bound.lease.backend().address;
        let Some(backend) = route
            .pool
            .backends()
            .iter()
            .find(|b| b.address == address && b.is_healthy())
        else {
            return false;
        };
        let lease = backend.lease();
        let previous = std::mem::replace(&mut bound.owner, owner.clone());
        previous.lost(&previous.route().metrics);
        owner.gained(&route.metrics);
        bound.lease = lease;
        bound.pool = route.pool.clone();
        bound.header = header.map(Arc::from);
        true
    }

    /// Ends the flow's binding: its owner stops counting it and its backend lease is let go.
    /// Called once, by the flow's task as it ends.
    pub(crate) fn unbind(&self) {
        if let Some(bound) = self.binding().take() {
            bound.owner.lost(&bound.owner.route().metrics);
        }
    }

    /// Notes traffic now.
    pub(crate) fn touch(&self) {
        let ms = i64::try_from(self.born.elapsed().as_millis()).unwrap_or(i64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// When the last datagram either way went.
    fn last_datagram(&self) -> Instant {
        let ms = self.last.load(Ordering::Relaxed);
        let offset = Duration::from_millis(ms.unsigned_abs());
        if ms >= 0 {
            self.born + offset
        } else {
            self.born.checked_sub(offset).unwrap_or(self.born)
        }
    }

    /// How long since the last datagram either way.
    pub(crate) fn idle(&self) -> Duration {
        self.last_datagram().elapsed()
    }

    /// Whether the backend has answered.
    pub(crate) fn has_answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }

    /// Takes over the history of a flow handed over by another process: whether its backend
    /// answered, and how long it has been idle.
    pub(crate) fn restore(&self, answered: bool, idle: Duration) {
        self.answered.store(answered, Ordering::Relaxed);
        let ms = i64::try_from(idle.as_millis()).unwrap_or(i64::MAX);
        self.last.store(-ms, Ordering::Relaxed);
    }

    /// The backend answered.
    pub(crate) fn answered(&self) {
        self.answered.store(true, Ordering::Relaxed);
        self.touch();
    }

    /// When the flow will have been quiet for `quiet` if nothing more happens, once its
    /// backend has answered (`None` before: it may still be waiting for an answer).
    pub(crate) fn quiet_at(&self, quiet: Duration) -> Option<Instant> {
        self.has_answered().then(|| self.last_datagram() + quiet)
    }

    /// When the flow expires if nothing more happens, given its timeouts.
    pub(crate) fn expires_at(&self, idle: Duration, stream_idle: Duration) -> Instant {
        let timeout = if self.answered.load(Ordering::Relaxed) {
            stream_idle
        } else {
            idle
        };
        self.last_datagram() + timeout
    }

    /// Relays one client datagram to the backend now (`scratch` holds header and datagram
    /// when a PROXY header goes first). `false` when the socket's buffer is full: then
    /// [`Flow::forward`] waits for room.
    pub(crate) fn try_forward(&self, datagram: &[u8], scratch: &mut Vec<u8>, live: &Live) -> bool {
        match self.upstream.try_send(with_header(datagram, scratch, live)) {
            Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => false,
            sent => {
                self.forwarded(datagram, sent.is_ok(), live);
                true
            }
        }
    }

    /// Relays one client datagram to the backend, waiting for room in the socket's buffer up
    /// to [`SEND_WAIT`]; still full then, the datagram is dropped, as the network would drop
    /// it, rather than hold up the port's other flows.
    pub(crate) async fn forward(&self, datagram: &[u8], scratch: &mut Vec<u8>, live: &Live) {
        if self.try_forward(datagram, scratch, live) {
            return;
        }
        let bytes = with_header(datagram, scratch, live);
        let sent = tokio::time::timeout(SEND_WAIT, self.upstream.send(bytes)).await;
        self.forwarded(datagram, matches!(sent, Ok(Ok(_))), live);
    }

    /// Counts a datagram relayed to the backend, or dropped.
    fn forwarded(&self, datagram: &[u8], sent: bool, live: &Live) {
        if sent {
            let m = &live.backend.metrics;
            m.datagrams_received.inc();
            m.bytes_received.inc_by(datagram.len() as u64);
            self.touch();
        } else {
            live.route.metrics.udp_dropped(UdpDrop::SendFailed);
        }
    }
}

/// The datagram as it goes to the backend: after the flow's PROXY header, if it has one
/// (assembled in `scratch`).
fn with_header<'a>(datagram: &'a [u8], scratch: &'a mut Vec<u8>, live: &Live) -> &'a [u8] {
    match &live.header {
        Some(header) => {
            scratch.clear();
            scratch.extend_from_slice(header);
            scratch.extend_from_slice(datagram);
            &scratch[..]
        }
        None => datagram,
    }
}

/// One shard of the flow table.
type Shard = Mutex<HashMap<SocketAddr, Arc<Flow>>>;

/// The flows of one UDP socket, by client, whichever listener owns each.
pub(crate) struct FlowTable {
    shards: Box<[Shard]>,
    hasher: std::collections::hash_map::RandomState,
    count: AtomicUsize,
}

impl FlowTable {
    pub(crate) fn new() -> Self {
        FlowTable {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            count: AtomicUsize::new(0),
        }
    }

    fn shard(
        &self,
        client: &SocketAddr,
    ) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Arc<Flow>>> {
        let index = (self.hasher.hash_one(client) as usize) % self.shards.len();
        self.shards[index].lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The flow of `client`, if it has one.
    pub(crate) fn get(&self, client: &SocketAddr) -> Option<Arc<Flow>> {
        self.shard(client).get(client).cloned()
    }

    /// Flows open now.
    pub(crate) fn len(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    /// Adds `flow`, ending whatever flow its client had.
    pub(crate) fn insert(&self, flow: Arc<Flow>) {
        let previous = self.shard(&flow.client).insert(flow.client, flow);
        match previous {
            Some(previous) => previous.done.cancel(),
            None => {
                self.count.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Removes `flow` if it is still its client's flow.
    pub(crate) fn remove(&self, flow: &Arc<Flow>) {
        let mut shard = self.shard(&flow.client);
        if shard
            .get(&flow.client)
            .is_some_and(|f| Arc::ptr_eq(f, flow))
        {
            shard.remove(&flow.client);
            self.count.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Every flow open now (a copy: the table stays unlocked while the caller works).
    pub(crate) fn snapshot(&self) -> Vec<Arc<Flow>> {
        let mut flows = Vec::with_capacity(self.len());
        for shard in self.shards.iter() {
            let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
            flows.extend(shard.values().cloned());
        }
        flows
    }
}

#[cfg(test)]
mod tests;
