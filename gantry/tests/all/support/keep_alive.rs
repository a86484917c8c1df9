//! HTTP/1.1 keep-alive clients that never retry, as most load tools and many HTTP libraries
//! (for requests that are not idempotent) behave: each keeps one connection, asks on it again
//! after a pause, and counts as an error anything but a whole answer to a request it sent,
//! including a connection closed between two of its requests. An answer with
//! `Connection: close` ends the connection cleanly; the client then opens a new one, or stops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::client::H1;

/// Keep-alive clients running until [`KeepAliveLoad::stop`].
pub struct KeepAliveLoad {
    stop: Arc<AtomicBool>,
    clients: Vec<tokio::task::JoinHandle<()>>,
    counts: Arc<Counts>,
}

#[derive(Default)]
struct Counts {
    answered: AtomicUsize,
    /// Answers that closed their connection (`Connection: close`).
    closed: AtomicUsize,
    errors: Mutex<Vec<String>>,
}

/// What a client does once the server closed its connection cleanly.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum AfterClose {
    /// Opens a new connection and goes on (an upgrade: the port lives on).
    Reconnect,
    /// Stops (the port or the process is going away).
    Stop,
}

impl KeepAliveLoad {
    /// `clients` clients on `addr`, each pausing `pause` between requests (so each is idle,
    /// between two requests, most of the time).
    pub async fn start(
        addr: SocketAddr,
        clients: usize,
        pause: Duration,
        after_close: AfterClose,
    ) -> KeepAliveLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let counts = Arc::new(Counts::default());
        let mut tasks = Vec::new();
        for _ in 0..clients {
            // Every client is connected before this returns.
            let first = H1::connect(addr).await.expect("connect");
            let (stop, counts) = (stop.clone(), counts.clone());
            tasks.push(tokio::spawn(async move {
                let mut connection = Some(first);
                while !stop.load(Ordering::SeqCst) {
                    let client = match connection.as_mut() {
                        Some(client) => client,
                        None => match H1::connect(addr).await {
                            Ok(client) => connection.insert(client),
                            Err(err) => {
                                counts.error(format!("connect: {err}"));
                                return;
                            }
                        },
                    };
                    match client.get("/").await {
                        Ok(answer) if answer.status.is_success() => {
                            counts.answered.fetch_add(1, Ordering::SeqCst);
                            if answer.header("connection").eq_ignore_ascii_case("close") {
                                counts.closed.fetch_add(1, Ordering::SeqCst);
                                connection = None;
                                if after_close == AfterClose::Stop {
                                    return;
                                }
                            }
                        }
                        Ok(answer) => counts.error(format!("status {}", answer.status)),
                        Err(err) => {
                            counts.error(format!("request: {err}"));
                            connection = None;
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            }));
        }
        KeepAliveLoad {
            stop,
            clients: tasks,
            counts,
        }
    }

    /// Answers so far.
    pub fn answered(&self) -> usize {
        self.counts.answered.load(Ordering::SeqCst)
    }

    /// Waits until `more` answers beyond those so far.
    pub async fn runs_on(&self, more: usize) {
        let target = self.answered() + more;
        super::eventually(&format!("{target} keep-alive answers"), || async {
            self.answered() >= target
        })
        .await;
    }

    /// Waits for every client to stop by itself (after [`AfterClose::Stop`]).
    pub async fn until_all_closed(self) -> LoadOutcome {
        for client in self.clients {
            tokio::time::timeout(Duration::from_secs(30), client)
                .await
                .expect("every client had its connection closed cleanly")
                .expect("client");
        }
        self.counts.outcome()
    }

    /// Stops the clients after their current request.
    pub async fn stop(self) -> LoadOutcome {
        self.stop.store(true, Ordering::SeqCst);
        for client in self.clients {
            client.await.expect("client");
        }
        self.counts.outcome()
    }
}

impl Counts {
    fn error(&self, what: String) {
        self.errors.lock().expect("lock").push(what);
    }

    fn outcome(&self) -> LoadOutcome {
        LoadOutcome {
            answered: self.answered.load(Ordering::SeqCst),
            closed: self.closed.load(Ordering::SeqCst),
            errors: self.errors.lock().expect("lock").clone(),
        }
    }
}

/// What the clients saw in all.
#[derive(Debug)]
#[allow(dead_code)] // read through `Debug`, in assertion messages
pub struct LoadOutcome {
    pub answered: usize,
    pub closed: usize,
    pub errors: Vec<String>,
}
