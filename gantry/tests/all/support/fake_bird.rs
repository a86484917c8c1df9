//! A stand-in for BIRD's control socket, for tests of the `gantry` binary without a routing
//! daemon: it answers `configure` as BIRD does (or refuses it, as BIRD does when its
//! configuration does not parse) and reports what Gantry's IPv4 routes file held each time.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::mpsc;

/// The stand-in, listening until the test's runtime ends.
pub struct FakeBird {
    configured: mpsc::UnboundedReceiver<String>,
    refusing: Arc<AtomicBool>,
}

impl FakeBird {
    /// Listens on `socket`; Gantry's routes are in the folder `routes`.
    pub fn start(socket: &Path, routes: PathBuf) -> FakeBird {
        let listener = UnixListener::bind(socket).expect("bind the control socket");
        let (tx, configured) = mpsc::unbounded_channel();
        let refusing = Arc::new(AtomicBool::new(false));
        let refuse = refusing.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (read, mut write) = stream.into_split();
                if write.write_all(b"0001 BIRD 2.0.12 ready.\n").await.is_err() {
                    continue;
                }
                let mut lines = BufReader::new(read).lines();
                if let Ok(Some(command)) = lines.next_line().await {
                    assert_eq!(command, "configure");
                    let held =
                        std::fs::read_to_string(routes.join("routes4.conf")).unwrap_or_default();
                    let _ = tx.send(held);
                    let answer: &[u8] = if refuse.load(Ordering::SeqCst) {
                        b"0002-Reading configuration from /etc/bird/bird.conf\n8002 /etc/bird/bird.conf:7:1 syntax error\n"
                    } else {
                        b"0002-Reading configuration from /etc/bird/bird.conf\n0003 Reconfigured\n"
                    };
                    let _ = write.write_all(answer).await;
                }
            }
        });
        FakeBird {
            configured,
            refusing,
        }
    }

    /// From now on refuses every `configure` (or takes it again).
    pub fn refuse(&self, refusing: bool) {
        self.refusing.store(refusing, Ordering::SeqCst);
    }

    /// Waits for the next `configure` whose routes satisfy `wanted`.
    pub async fn configured(&mut self, wanted: impl Fn(&str) -> bool) {
        let wait = async {
            while let Some(routes) = self.configured.recv().await {
                if wanted(&routes) {
                    return;
                }
            }
            panic!("the control socket closed");
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .expect("a configure with the routes wanted");
    }
}

/// Waits until the guard of the routing folder `routes` has exited (its lock is free).
pub async fn guard_gone(routes: &Path) {
    super::eventually("the guard to exit", || async {
        let file = std::fs::File::open(routes.join("guard.lock")).expect("guard lock");
        rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_ok()
    })
    .await;
}
