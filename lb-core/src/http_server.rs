//! A minimal HTTP server for Gantry's own small endpoints (the admin listener and the demo's
//! backends): pingora's `ServeHttp` apps behind a plain accept loop that stops on request.

use std::net::SocketAddr;
use std::sync::Arc;

use pingora::apps::http_app::ServeHttp;
use pingora::apps::ServerApp;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::pingora_stream;

/// A socket bound and listening for a server that does not serve yet: binding can fail,
/// serving cannot, so a reload binds first and serves when it commits.
pub struct BoundServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    /// Bound here, not handed over by another process.
    fresh: bool,
}

impl BoundServer {
    /// Binds `address`, with port reuse as Gantry's ports.
    pub async fn bind(address: SocketAddr) -> std::io::Result<BoundServer> {
        let socket = crate::bind::bound_socket(address, socket2::Type::STREAM, false)?;
        let mut bound = Self::listen(socket)?;
        bound.fresh = true;
        Ok(bound)
    }

    /// Serves on a socket that is bound already (handed over by another process).
    pub fn listen(socket: socket2::Socket) -> std::io::Result<BoundServer> {
        let listener = crate::bind::listening(socket)?;
        let local_addr = listener.local_addr()?;
        Ok(BoundServer {
            listener,
            local_addr,
            fresh: false,
        })
    }

    /// The address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Whether the socket was bound here rather than handed over.
    pub fn fresh(&self) -> bool {
        self.fresh
    }

    /// Serves `app` until stopped.
    pub fn serve<A>(self, app: A) -> SmallServer
    where
        A: ServeHttp + Send + Sync + 'static,
    {
        SmallServer::start_on(self.listener, self.local_addr, app)
    }
}

/// A running server; dropping it without [`SmallServer::stop`] leaves it running.
pub struct SmallServer {
    local_addr: SocketAddr,
    /// The listening socket, shared with the accept loop.
    listener: Arc<TcpListener>,
    accept_task: tokio::task::JoinHandle<()>,
    stop: watch::Sender<bool>,
    close: CancellationToken,
    connections: TaskTracker,
}

impl SmallServer {
    /// Serves `app` on `listener` until stopped.
    pub fn start<A>(listener: TcpListener, app: A) -> std::io::Result<SmallServer>
    where
        A: ServeHttp + Send + Sync + 'static,
    {
        let local_addr = listener.local_addr()?;
        Ok(Self::start_on(listener, local_addr, app))
    }

    fn start_on<A>(listener: TcpListener, local_addr: SocketAddr, app: A) -> SmallServer
    where
        A: ServeHttp + Send + Sync + 'static,
    {
        let listener = Arc::new(listener);
        let accepting = listener.clone();
        let (stop, stop_rx) = watch::channel(false);
        let connections = TaskTracker::new();
        let close = CancellationToken::new();
        let app = Arc::new(app);
        let tracker = connections.clone();
        let closing = close.clone();
        let accept_task = tokio::spawn(async move {
            let mut stopped = stop_rx.clone();
            loop {
                let (stream, peer) = tokio::select! {
                    accepted = accepting.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            tracing::warn!(%err, "accept failed");
                            continue;
                        }
                    },
                    _ = stopped.wait_for(|s| *s) => return,
                };
                let Ok(local) = stream.local_addr() else {
                    continue;
                };
                let app = app.clone();
                let shutdown = stop_rx.clone();
                let closing = closing.clone();
                tracker.spawn(async move {
                    let stream = pingora_stream(stream, peer, local);
                    tokio::select! {
                        _ = ServerApp::process_new(&app, Box::new(stream), &shutdown) => {}
                        _ = closing.cancelled() => {}
                    }
                });
            }
        });
        SmallServer {
            local_addr,
            listener,
            accept_task,
            stop,
            close,
            connections,
        }
    }

    /// The address served.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The listening socket (to hand to a successor).
    pub fn socket(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.listener.as_fd()
    }

    /// Stops accepting and closes open connections: these endpoints answer in microseconds,
    /// so there is nothing worth draining, and an idle keep-alive client must not delay exit.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        // The socket is closed once the accept loop has returned (and this handle is gone).
        let _ = self.accept_task.await;
        drop(self.listener);
        self.close.cancel();
        self.connections.close();
        self.connections.wait().await;
    }
}
