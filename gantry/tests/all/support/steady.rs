//! A steady HTTP/1.1 load for tests that change what serves under it (reloads, promotions):
//! one client in a loop, keep-alive with a new connection each tenth request, counting
//! answers that were and were not 200.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use http::StatusCode;

use super::client::{get, H1};
use super::eventually;

/// Requests `port` in a loop (keep-alive, plus a new connection each tenth request) until
/// stopped, counting successes and failures.
pub struct SteadyLoad {
    ok: Arc<AtomicUsize>,
    failed: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl SteadyLoad {
    /// Starts requesting `target`.
    pub fn start(target: SocketAddr) -> SteadyLoad {
        let (ok, failed, stop) = (
            Arc::<AtomicUsize>::default(),
            Arc::<AtomicUsize>::default(),
            Arc::<AtomicBool>::default(),
        );
        let (ok2, failed2, stop2) = (ok.clone(), failed.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut kept = H1::connect(target).await.expect("connect");
            let mut n = 0usize;
            while !stop2.load(Ordering::SeqCst) {
                n += 1;
                let result = if n.is_multiple_of(10) {
                    Ok(get(target, "/").await)
                } else {
                    kept.get("/").await
                };
                match result {
                    Ok(answer) if answer.status == StatusCode::OK => {
                        ok2.fetch_add(1, Ordering::SeqCst)
                    }
                    _ => failed2.fetch_add(1, Ordering::SeqCst),
                };
            }
        });
        SteadyLoad {
            ok,
            failed,
            stop,
            task,
        }
    }

    /// Waits until `more` further requests succeeded.
    pub async fn wait_for_more(&self, more: usize) {
        let target = self.ok.load(Ordering::SeqCst) + more;
        let ok = self.ok.clone();
        eventually("more requests under load", || {
            let ok = ok.clone();
            async move { ok.load(Ordering::SeqCst) >= target }
        })
        .await;
    }

    /// Stops the load: (succeeded, failed).
    pub async fn finish(self) -> (usize, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.expect("load task");
        (
            self.ok.load(Ordering::SeqCst),
            self.failed.load(Ordering::SeqCst),
        )
    }
}
