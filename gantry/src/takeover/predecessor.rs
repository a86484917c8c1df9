//! The running Gantry's side: holding the control socket, saying who holds it to anyone of its
//! user who connects, and handing everything over to one successor at a time.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::wire::{Connection, ControlListener, WireError, MAX_FDS};
use super::{Message, TakeoverError, SUCCESSOR_READY_TIMEOUT};
use crate::app::Gantry;

/// How long a process that connects may take to say what it wants.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What became of a takeover.
#[derive(Debug)]
pub enum TakeoverEvent {
    /// The process `pid` serves everything this one served: this one drains and exits.
    TakenOver {
        /// The successor's process id, as the kernel names the peer.
        pid: u32,
    },
    /// The process `pid` asked to take over and failed before it served: this one keeps
    /// serving.
    Failed {
        /// The would-be successor's process id.
        pid: u32,
        /// Why.
        error: TakeoverError,
    },
}

/// The control socket of a running Gantry.
pub struct ControlServer {
    name: String,
    config: String,
    listener: Mutex<Option<Arc<ControlListener>>>,
    /// A takeover is under way: others are refused.
    busy: AtomicBool,
    /// Cancelled when the socket is given up.
    closed: CancellationToken,
}

impl ControlServer {
    /// Holds the control socket `name` for a Gantry serving `config`; if another process holds
    /// it, says who ([`TakeoverError::AnotherGantry`]).
    pub async fn bind_exclusive(name: &str, config: &str) -> Result<ControlServer, TakeoverError> {
        let control_error = |source| TakeoverError::Control {
            name: name.to_owned(),
            source,
        };
        let listener = match ControlListener::bind(name) {
            Ok(listener) => listener,
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(match super::successor::Predecessor::connect(name).await {
                    Ok(holder) => holder.into_another_gantry(),
                    Err(err) => err,
                });
            }
            Err(err) => return Err(control_error(err)),
        };
        Ok(ControlServer {
            name: name.to_owned(),
            config: config.to_owned(),
            listener: Mutex::new(Some(Arc::new(listener))),
            busy: AtomicBool::new(false),
            closed: CancellationToken::new(),
        })
    }

    /// The control socket's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Gives the control socket up (a successor holds it next).
    fn close(&self) {
        self.closed.cancel();
        self.listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Serves the control socket for `gantry` until it is given up; takeovers are reported on
    /// the returned channel.
    pub fn serve(self: Arc<Self>, gantry: Gantry) -> mpsc::UnboundedReceiver<TakeoverEvent> {
        let (events, receiver) = mpsc::unbounded_channel();
        let Some(listener) = self
            .listener
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
        else {
            return receiver;
        };
        tokio::spawn(async move {
            loop {
                let connection = tokio::select! {
                    accepted = listener.accept() => accepted,
                    () = self.closed.cancelled() => return,
                };
                match connection {
                    Ok(connection) => {
                        tokio::spawn(self.clone().answer(
                            connection,
                            gantry.clone(),
                            events.clone(),
                        ));
                    }
                    Err(err) => {
                        tracing::warn!(%err, "control socket: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        });
        receiver
    }

    /// One connection: who this is, and a takeover if it asks for one.
    async fn answer(
        self: Arc<Self>,
        connection: Connection,
        gantry: Gantry,
        events: mpsc::UnboundedSender<TakeoverEvent>,
    ) {
        match connection.peer_is_trusted() {
            Ok(true) => {}
            Ok(false) | Err(_) => {
                tracing::warn!(peer = ?connection.peer().ok(), "control socket: a process of another user connected; ignored");
                return;
            }
        }
        let pid = connection.peer_pid();
        let hello = Message::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config: self.config.clone(),
        };
        if connection.send(&hello, &[]).await.is_err() {
            return;
        }
        let request = tokio::time::timeout(REQUEST_TIMEOUT, connection.receive::<Message>()).await;
        match request {
            Ok(Ok((Message::Takeover, _))) => {}
            // A look (who holds the socket?), or nothing sensible: nothing to do.
            _ => return,
        }
        if self.busy.swap(true, Ordering::AcqRel) {
            let refused = Message::Refused {
                reason: "a takeover is already under way".into(),
            };
            let _ = connection.send(&refused, &[]).await;
            return;
        }
        tracing::info!(pid, "a new process takes over; handing the sockets over");
        let event = match self.hand_over(&connection, &gantry).await {
            Ok(()) => TakeoverEvent::TakenOver { pid },
            Err(error) => {
                self.busy.store(false, Ordering::Release);
                TakeoverEvent::Failed { pid, error }
            }
        };
        let _ = events.send(event);
    }

    /// The takeover, from this side.
    async fn hand_over(
        &self,
        connection: &Connection,
        gantry: &Gantry,
    ) -> Result<(), TakeoverError> {
        let sockets = gantry
            .sockets_to_hand_over()
            .await
            .map_err(TakeoverError::Local)?;
        for batch in sockets.chunks(MAX_FDS) {
            let message = Message::Sockets {
                sockets: batch.iter().map(|s| (s.kind, s.address)).collect(),
            };
            let fds: Vec<_> = batch.iter().map(|s| s.socket.as_fd()).collect();
            connection.send(&message, &fds).await?;
        }
        drop(sockets);
        connection.send(&Message::SocketsEnd, &[]).await?;
        let ready = tokio::time::timeout(SUCCESSOR_READY_TIMEOUT, connection.receive::<Message>())
            .await
            .map_err(|_| TakeoverError::NotReady(SUCCESSOR_READY_TIMEOUT))?;
        let udp = match ready? {
            (Message::Ready { udp }, _) => udp,
            (other, _) => return Err(WireError::Protocol(format!("{other:?}")).into()),
        };
        // From here the successor serves: whatever goes wrong, this process drains.
        if let Err(err) = self.hand_over_flows(connection, gantry, &udp).await {
            tracing::error!(error = %err, "handing UDP flows over failed; their clients' next datagrams start new flows");
        }
        self.close();
        if let Err(err) = connection.send(&Message::Done, &[]).await {
            tracing::warn!(error = %err, "could not tell the new process the handover is done");
        }
        Ok(())
    }

    /// Hands over the flows of each UDP port the successor serves.
    async fn hand_over_flows(
        &self,
        connection: &Connection,
        gantry: &Gantry,
        ports: &[std::net::SocketAddr],
    ) -> Result<(), TakeoverError> {
        for &port in ports {
            let flows = gantry
                .hand_over_udp_flows(port)
                .await
                .map_err(TakeoverError::Local)?;
            tracing::info!(address = %port, flows = flows.len(), "UDP port handed over with its flows");
            // One message at least, so the successor hears of every port.
            let mut batches = flows.chunks(MAX_FDS).peekable();
            if batches.peek().is_none() {
                let message = Message::Flows {
                    port,
                    flows: Vec::new(),
                };
                connection.send(&message, &[]).await?;
            }
            for batch in batches {
                let message = Message::Flows {
                    port,
                    flows: batch.iter().map(|f| f.state.clone()).collect(),
                };
                let fds: Vec<_> = batch.iter().map(|f| f.upstream.as_fd()).collect();
                connection.send(&message, &fds).await?;
            }
        }
        Ok(())
    }
}
