//! Layer-4 proxying for `tcp` and `tls` ports: connect to a backend through the pool's attempt
//! loop (another one after a failed connect, by its retry rule), send the PROXY header if
//! configured, then relay bytes both ways. A FIN from either side is passed on as a half-close while the other direction
//! keeps flowing; the connection ends when both directions are done, on an error, or after
//! `tcp_idle` with no byte in either direction.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use lb_policy::{hash_key, Outcome, PickContext};

use crate::metrics::Counter;
use crate::pool::attempt::{self, Attempts};
use crate::pool::{BackendLease, BackendState};
use crate::proxy_protocol;
use crate::route::Route;

/// Relay buffer per direction.
const RELAY_BUFFER: usize = 16 * 1024;

/// Who the client is and what it reached.
#[derive(Clone, Copy, Debug)]
pub struct ClientInfo<'a> {
    /// The client's address.
    pub peer: SocketAddr,
    /// The local address it connected to.
    pub local: SocketAddr,
    /// TLS server name, on `tls` ports.
    pub server_name: Option<&'a str>,
}

/// Proxies one client connection to a backend of `route`.
pub async fn proxy<C>(route: &Route, client: C, info: ClientInfo<'_>)
where
    C: AsyncRead + AsyncWrite + Unpin,
{
    let key = &route.port.key;
    let Some((lease, mut upstream)) = connect(route, &info).await else {
        route.unrouted.connections.inc();
        // No backends at all is a configuration state (visible in /config and metrics), not
        // something to repeat per connection; backends that all failed are worth a warning.
        if route.pool.backends().is_empty() {
            tracing::debug!(service = %key.service, port = %key.port, "no backends; closing connection");
        } else {
            tracing::warn!(service = %key.service, port = %key.port, client = %info.peer, "no backend reachable; closing connection");
        }
        return;
    };
    let backend = lease.backend();
    if let Some(version) = route.port.proxy_protocol {
        let header = proxy_protocol::header(version, info.peer, info.local, info.server_name);
        if let Err(err) = upstream.write_all(&header).await {
            tracing::warn!(service = %key.service, port = %key.port, backend = %backend.label, %err, "sending PROXY header failed");
            return;
        }
    }
    let started = Instant::now();
    let outcome = relay_to_backend(route, backend, client, upstream).await;
    if route.logs_access() {
        tracing::info!(
            target: "gantry::access",
            service = %key.service,
            port = %key.port,
            client = %info.peer,
            backend = %backend.label,
            outcome = outcome.as_str(),
            duration_ms = crate::logging::millis(started.elapsed()),
        );
    }
}

/// Connects to a backend through the attempt loop: another one after a failed connect, by
/// the pool's retry rule.
pub(crate) async fn connect(
    route: &Route,
    info: &ClientInfo<'_>,
) -> Option<(BackendLease, TcpStream)> {
    let cx = PickContext {
        client: Some(info.peer),
        authority: info.server_name,
        protocol: route.port.protocol,
        hash_key: hash_key(&route.port.balancer.hash_key, Some(info.peer.ip()), None),
        headers: None,
    };
    let pool = &route.pool;
    let mut attempts = Attempts::new();
    let timeout = route.port.settings.timeouts.connect;
    loop {
        let attempt = attempts.next(pool, &cx).ok()?;
        let backend = attempt.backend().clone();
        let started = Instant::now();
        match dial(&backend, timeout).await {
            Ok(stream) => {
                attempts.connected(&attempt);
                attempt::finished(pool, &backend, Outcome::Connected, started.elapsed());
                return Some((attempt.into_lease(), stream));
            }
            Err(outcome) => {
                if !attempts.failed(pool, attempt, outcome) {
                    return None;
                }
            }
        }
    }
}

/// Opens a connection to `backend` within `timeout` (with Nagle off: what is written is a
/// whole message or a relay's chunk); the failure as health policies see it.
pub(crate) async fn dial(backend: &BackendState, timeout: Duration) -> Result<TcpStream, Outcome> {
    match tokio::time::timeout(timeout, TcpStream::connect(backend.address)).await {
        Ok(Ok(stream)) => {
            let _ = stream.set_nodelay(true);
            Ok(stream)
        }
        Ok(Err(err)) => {
            tracing::debug!(backend = %backend.label, %err, "connect failed");
            Err(Outcome::ConnectFailed)
        }
        Err(_) => {
            tracing::debug!(backend = %backend.label, "connect timed out");
            Err(Outcome::TimedOut)
        }
    }
}

/// How a relay ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayOutcome {
    /// Both sides finished sending.
    Closed,
    /// An IO error on either side.
    Error,
    /// No traffic for the idle timeout.
    IdleTimeout,
}

impl RelayOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RelayOutcome::Closed => "closed",
            RelayOutcome::Error => "error",
            RelayOutcome::IdleTimeout => "idle_timeout",
        }
    }
}

/// Relays between a client and `backend` under the port's idle timeout, counting the bytes in
/// the backend's metrics.
pub(crate) async fn relay_to_backend<A, B>(
    route: &Route,
    backend: &BackendState,
    client: A,
    upstream: B,
) -> RelayOutcome
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    relay(
        client,
        upstream,
        route.port.settings.timeouts.tcp_idle,
        &backend.metrics.bytes_received,
        &backend.metrics.bytes_sent,
    )
    .await
}

/// Copies bytes both ways until both directions end, counting them as they pass.
pub async fn relay<A, B>(
    client: A,
    upstream: B,
    idle: Duration,
    received: &Counter,
    sent: &Counter,
) -> RelayOutcome
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut client_read, mut client_write) = tokio::io::split(client);
    let (mut upstream_read, mut upstream_write) = tokio::io::split(upstream);
    let last_activity = ActivityClock::new();
    let both = async {
        tokio::try_join!(
            pump(
                &mut client_read,
                &mut upstream_write,
                &last_activity,
                received
            ),
            pump(&mut upstream_read, &mut client_write, &last_activity, sent),
        )
    };
    let idle_watch = async {
        loop {
            let since = last_activity.last().elapsed();
            if since >= idle {
                return;
            }
            // A sleep of a duration never overflows the clock, however long `idle` is.
            tokio::time::sleep(idle - since).await;
        }
    };
    tokio::select! {
        result = both => match result {
            Ok(_) => RelayOutcome::Closed,
            Err(_) => RelayOutcome::Error,
        },
        _ = idle_watch => RelayOutcome::IdleTimeout,
    }
}

/// When bytes last moved, shared by both directions and the idle watch of one relay.
struct ActivityClock {
    start: Instant,
    /// Milliseconds after `start`.
    last_ms: AtomicU64,
}

impl ActivityClock {
    fn new() -> Self {
        ActivityClock {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn last(&self) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed))
    }
}

/// One direction: copy until EOF, then pass the half-close on.
async fn pump<R, W>(
    from: &mut R,
    to: &mut W,
    last_activity: &ActivityClock,
    counter: &Counter,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; RELAY_BUFFER];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(());
        }
        to.write_all(&buf[..n]).await?;
        // TLS streams buffer records until flushed; for TCP this is a no-op.
        to.flush().await?;
        last_activity.touch();
        counter.inc_by(n as u64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters() -> (Counter, Counter) {
        (Counter::default(), Counter::default())
    }

    #[tokio::test]
    async fn half_close_passes_through_and_the_other_direction_keeps_flowing() {
        let (client_far, client_near) = tokio::io::duplex(1024);
        let (upstream_near, upstream_far) = tokio::io::duplex(1024);
        let (received, sent) = counters();
        let relay_task = tokio::spawn(async move {
            relay(
                client_near,
                upstream_near,
                Duration::from_secs(60),
                &received,
                &sent,
            )
            .await
        });
        let (mut client, mut upstream) = (client_far, upstream_far);
        client.write_all(b"ping").await.expect("write");
        client.shutdown().await.expect("half-close");
        let mut got = Vec::new();
        upstream.read_to_end(&mut got).await.expect("read to EOF");
        assert_eq!(got, b"ping");
        upstream
            .write_all(b"pong")
            .await
            .expect("write after client FIN");
        upstream.shutdown().await.expect("close");
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read");
        assert_eq!(back, b"pong");
        assert_eq!(relay_task.await.expect("join"), RelayOutcome::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_ends_after_the_idle_timeout() {
        let (_client, client_near) = tokio::io::duplex(64);
        let (upstream_near, _upstream) = tokio::io::duplex(64);
        let (received, sent) = counters();
        let outcome = relay(
            client_near,
            upstream_near,
            Duration::from_secs(5),
            &received,
            &sent,
        )
        .await;
        assert_eq!(outcome, RelayOutcome::IdleTimeout);
    }
}
