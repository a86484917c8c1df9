//! UDP flows: one per client address and port, each bound to one backend through its own
//! connected upstream socket (so replies stay apart), kept in a table sharded by client so
//! worker threads seldom meet on a lock. A flow ends after its idle timeout (`udp_idle` until
//! its backend has answered, `udp_stream_idle` after), at once when its backend leaves the set
//! or stops being healthy (the client's next datagram starts a new flow), or when its port is
//! closed for good.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::{PortMetrics, UdpDrop};
use crate::pool::{BackendLease, BackendPool, BackendState};

/// Shards of the flow table: enough that two workers rarely want the same lock.
const SHARDS: usize = 64;

/// Longest a datagram waits for room in its upstream socket's buffer.
pub(crate) const SEND_WAIT: Duration = Duration::from_millis(10);

/// One client's flow to one backend.
pub(crate) struct Flow {
    pub(crate) client: SocketAddr,
    lease: BackendLease,
    /// The backend set the flow was last found in (a reload that keeps its backend keeps it).
    pool: Mutex<Arc<BackendPool>>,
    pub(crate) upstream: UdpSocket,
    /// A PROXY v2 (`DGRAM`) header sent before each datagram, when the port asks for one.
    header: Option<Vec<u8>>,
    born: Instant,
    /// Milliseconds after `born` of the last datagram either way.
    last: AtomicU64,
    /// The backend has answered: the flow goes both ways.
    answered: AtomicBool,
    /// Ends the flow.
    pub(crate) done: CancellationToken,
}

impl Flow {
    pub(crate) fn new(
        client: SocketAddr,
        lease: BackendLease,
        pool: Arc<BackendPool>,
        upstream: UdpSocket,
        header: Option<Vec<u8>>,
    ) -> Self {
        Flow {
            client,
            lease,
            pool: Mutex::new(pool),
            upstream,
            header,
            born: Instant::now(),
            last: AtomicU64::new(0),
            answered: AtomicBool::new(false),
            done: CancellationToken::new(),
        }
    }

    /// The flow's backend.
    pub(crate) fn backend(&self) -> &Arc<BackendState> {
        self.lease.backend()
    }

    /// Whether the flow may go on in `pool`: its backend is still in the set and healthy.
    pub(crate) fn live_in(&self, pool: &Arc<BackendPool>) -> bool {
        if !self.backend().is_healthy() {
            return false;
        }
        let mut known = self.pool.lock().unwrap_or_else(|p| p.into_inner());
        if Arc::ptr_eq(&known, pool) {
            return true;
        }
        // A reload: once per flow, look for its backend in the new set.
        if pool.contains(self.backend().address) {
            *known = pool.clone();
            true
        } else {
            false
        }
    }

    /// Notes traffic now.
    pub(crate) fn touch(&self) {
        let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    /// The backend answered.
    pub(crate) fn answered(&self) {
        self.answered.store(true, Ordering::Relaxed);
        self.touch();
    }

    /// When the flow expires if nothing more happens, given its timeouts.
    pub(crate) fn expires_at(&self, idle: Duration, stream_idle: Duration) -> Instant {
        let timeout = if self.answered.load(Ordering::Relaxed) {
            stream_idle
        } else {
            idle
        };
        self.born + Duration::from_millis(self.last.load(Ordering::Relaxed)) + timeout
    }

    /// Relays one client datagram to the backend (`scratch` holds header and datagram when
    /// a PROXY header goes first). A socket buffer still full after [`SEND_WAIT`] drops it, as
    /// the network would, rather than hold up the port's other flows.
    pub(crate) async fn forward(
        &self,
        datagram: &[u8],
        scratch: &mut Vec<u8>,
        metrics: &PortMetrics,
    ) {
        let bytes = match &self.header {
            Some(header) => {
                scratch.clear();
                scratch.extend_from_slice(header);
                scratch.extend_from_slice(datagram);
                &scratch[..]
            }
            None => datagram,
        };
        match tokio::time::timeout(SEND_WAIT, self.upstream.send(bytes)).await {
            Ok(Ok(_)) => {
                let m = &self.backend().metrics;
                m.datagrams_received.inc();
                m.bytes_received.inc_by(datagram.len() as u64);
                self.touch();
            }
            Ok(Err(_)) | Err(_) => metrics.udp_dropped(UdpDrop::SendFailed),
        }
    }
}

/// One shard of the flow table.
type Shard = Mutex<HashMap<SocketAddr, Arc<Flow>>>;

/// The flows of one port, by client.
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
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use lb_config::{Backend, Backoff};
    use lb_policy::RoundRobin;

    use super::*;
    use crate::pool::Policies;

    async fn flow() -> Arc<Flow> {
        let backends = [Backend {
            address: "127.0.0.1:9".parse().expect("addr"),
            weight: 1,
        }];
        let policies = Policies {
            balancer: &RoundRobin,
            affinity: None,
            affinity_counters: PortMetrics::new().affinity,
            retries: 0,
            backoff: Backoff {
                initial: Duration::from_secs(1),
                max: Duration::from_secs(1),
            },
            observers: Vec::new(),
        };
        let pool = Arc::new(BackendPool::build(&backends, policies, None));
        let lease = pool.backends()[0].lease();
        let upstream = UdpSocket::bind("127.0.0.1:0").await.expect("socket");
        Arc::new(Flow::new(
            "127.0.0.1:5353".parse().expect("addr"),
            lease,
            pool,
            upstream,
            None,
        ))
    }

    /// The idle timeouts on tokio's clock, paused: the flow lives `udp_idle` after its last
    /// datagram until its backend answers, and `udp_stream_idle` after.
    #[tokio::test(start_paused = true)]
    async fn a_flow_expires_on_its_idle_timeout_measured_from_its_last_datagram() {
        let (idle, stream_idle) = (Duration::from_secs(30), Duration::from_secs(120));
        let flow = flow().await;
        let born = Instant::now();
        assert_eq!(flow.expires_at(idle, stream_idle), born + idle);
        tokio::time::advance(Duration::from_secs(20)).await;
        flow.touch();
        assert_eq!(
            flow.expires_at(idle, stream_idle),
            born + Duration::from_secs(50)
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        flow.answered();
        assert_eq!(
            flow.expires_at(idle, stream_idle),
            born + Duration::from_secs(150)
        );
        tokio::time::advance(Duration::from_secs(121)).await;
        assert!(flow.expires_at(idle, stream_idle) <= Instant::now());
    }

    #[tokio::test]
    async fn the_table_keeps_one_flow_per_client_and_removes_only_its_own() {
        let table = FlowTable::new();
        let (first, second) = (flow().await, flow().await);
        table.insert(first.clone());
        table.insert(second.clone());
        assert_eq!(table.len(), 1);
        assert!(first.done.is_cancelled(), "the replaced flow ends");
        table.remove(&first);
        assert_eq!(table.len(), 1, "a replaced flow removes nothing");
        table.remove(&second);
        assert_eq!(table.len(), 0);
        assert!(table.get(&second.client).is_none());
    }
}
