//! Upgrading without a refused connection or a failed request, in a network namespace of the
//! test's own, under clients that open a new connection for every request and keep-alive
//! clients that never retry, which must see no failure. The new process takes the old one's
//! sockets over through the control socket (the same accept queue: nothing is queued on a
//! socket that closes), two ways:
//! - `gantry run --takeover` beside a running one (containers, any supervisor): the first
//!   hands over, drains and exits by itself;
//! - SIGUSR2 makes a `gantry` start its own command line again as such a process, and tell the
//!   service manager (`NOTIFY_SOCKET`) the new main process (systemd); a new process that
//!   cannot start changes nothing.
//!
//! And a second `gantry run` without `--takeover` refuses to start, naming the first.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UnixDatagram;

use crate::support::binary::Running;
use crate::support::cluster::{free_port, origin_behind};
use crate::support::eventually;
use crate::support::keep_alive::{AfterClose, KeepAliveLoad};
use crate::support::netns::Netns;
use crate::support::origin::{HttpOrigin, OriginProtocol};

/// Clients each opening a new connection per request, throughout.
const CLIENTS: usize = 4;
/// Requests answered before a handover starts, and after the old process has exited.
const REQUESTS_PER_PHASE: u64 = 200;

#[test]
fn a_second_gantry_with_takeover_takes_the_ports_over_and_the_first_drains_and_exits() {
    Netns::create("upgrade").run(|| async {
        let origin = HttpOrigin::start("origin", OriginProtocol::Http1).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut first, proxy) = first_gantry(dir.path(), origin.addr).await;
        let load = Load::start(proxy);
        load.answered(REQUESTS_PER_PHASE).await;
        let keep_alive =
            KeepAliveLoad::start(proxy, 10, Duration::from_millis(20), AfterClose::Reconnect).await;

        // The new process, on the same configuration, takes the first's sockets over.
        let second_config = dir.path().join("second.yaml");
        std::fs::write(&second_config, config(proxy.port(), origin.addr)).expect("write");
        let mut second =
            Running::start_with(&second_config, &first.control_socket, &["--takeover"], &[]);
        assert_eq!(second.address("listening").await, proxy, "the same port");
        second.log("took over").await;
        // The first hands over, drains and exits by itself.
        first
            .log("the new process serves; this one drains and exits")
            .await;
        exits_cleanly(&mut first.child, "the first process").await;
        // Only the second process is left to answer.
        load.answered(load.count() + REQUESTS_PER_PHASE).await;
        keep_alive.runs_on(100).await;
        load.stop_without_failures().await;
        let kept = keep_alive.stop().await;
        assert!(kept.errors.is_empty(), "keep-alive clients: {kept:?}");
        second.signal("TERM");
        exits_cleanly(&mut second.child, "the second process").await;
    });
}

#[test]
fn a_second_gantry_without_takeover_refuses_to_start_and_names_the_first() {
    Netns::create("second").run(|| async {
        let origin = HttpOrigin::start("origin", OriginProtocol::Http1).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let config_path = dir.path().join("gantry.yaml");
        let port = free_port(IpAddr::from([127, 0, 0, 1]));
        std::fs::write(&config_path, config(port, origin.addr)).expect("write");
        let mut first = Running::start(&config_path);
        first.log("ready").await;
        let first_pid = first.child.id().expect("pid");

        let mut second = Running::start_with(&config_path, &first.control_socket, &[], &[]);
        let named = format!(
            "another gantry (pid {first_pid}, configuration {}",
            config_path.display()
        );
        refuses_to_start(&mut second, &named).await;
        // It took none of the first's port: every connection is the first's.
        let proxy = SocketAddr::from(([127, 0, 0, 1], port));
        let load = Load::start(proxy);
        load.answered(REQUESTS_PER_PHASE).await;
        load.stop_without_failures().await;
        assert!(
            first.child.try_wait().expect("status").is_none(),
            "the first serves on"
        );
        first.signal("TERM");
        exits_cleanly(&mut first.child, "the first process").await;
    });
}

#[test]
fn sigusr2_hands_over_to_a_new_process_and_tells_the_service_manager() {
    Netns::create("handover").run(|| async {
        let origin = HttpOrigin::start("origin", OriginProtocol::Http1).await;
        let dir = tempfile::tempdir().expect("tempdir");
        // The service manager's end of NOTIFY_SOCKET.
        let notify_path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&notify_path).expect("notify socket");
        let config_path = dir.path().join("gantry.yaml");
        let port = free_port(IpAddr::from([127, 0, 0, 1]));
        std::fs::write(&config_path, config(port, origin.addr)).expect("write");
        let mut first = Running::start_with_env(&config_path, &[("NOTIFY_SOCKET", &notify_path)]);
        let first_pid = first.child.id().expect("pid");
        assert_eq!(
            notification(&manager).await,
            format!("READY=1\nMAINPID={first_pid}\n"),
            "ready, once serving"
        );
        let proxy = SocketAddr::from(([127, 0, 0, 1], port));
        let load = Load::start(proxy);
        load.answered(REQUESTS_PER_PHASE).await;
        // Keep-alive clients that never retry, idle between requests most of the time.
        let keep_alive =
            KeepAliveLoad::start(proxy, 10, Duration::from_millis(20), AfterClose::Reconnect).await;

        // A new process that cannot start (its configuration is refused) changes nothing.
        std::fs::write(&config_path, "services: [{ name: web }]\n").expect("write");
        first.signal("USR2");
        first
            .log("handover failed; this process keeps serving")
            .await;
        assert!(
            first.child.try_wait().expect("status").is_none(),
            "still serving"
        );
        load.answered(load.count() + REQUESTS_PER_PHASE).await;

        std::fs::write(&config_path, config(port, origin.addr)).expect("write");
        first.signal("USR2");
        let told = notification(&manager).await;
        let successor: u32 = told
            .strip_prefix("MAINPID=")
            .and_then(|rest| rest.strip_suffix("\nREADY=1\n"))
            .and_then(|pid| pid.parse().ok())
            .unwrap_or_else(|| panic!("the new main process and ready: {told:?}"));
        let successor = Successor(successor);
        assert_ne!(successor.0, first_pid);
        exits_cleanly(&mut first.child, "the old process").await;
        load.answered(load.count() + REQUESTS_PER_PHASE).await;
        keep_alive.runs_on(100).await;
        load.stop_without_failures().await;
        let kept = keep_alive.stop().await;
        assert!(kept.errors.is_empty(), "keep-alive clients: {kept:?}");
        assert!(
            kept.closed >= 10,
            "each connection to the old process closed after an answer: {kept:?}"
        );
        successor.stop().await;
    });
}

/// Two Gantries with control sockets of their own are two on purpose, but a port is still
/// not theirs to share: the second finds the first's socket on the port (the kernel would let
/// it bind beside, `SO_REUSEPORT`) and refuses to start, naming the process.
#[test]
fn a_second_gantry_with_a_control_socket_of_its_own_still_refuses_a_port_the_first_holds() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let origin = HttpOrigin::start("origin", OriginProtocol::Http1).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut first, proxy) = first_gantry(dir.path(), origin.addr).await;
        let first_pid = first.child.id().expect("pid");

        let second_config = dir.path().join("second.yaml");
        std::fs::write(&second_config, config(proxy.port(), origin.addr)).expect("write");
        let mut second = Running::start(&second_config);
        let named = format!("{proxy}/tcp is already held by gantry (pid {first_pid})");
        refuses_to_start(&mut second, &named).await;
        let load = Load::start(proxy);
        load.answered(REQUESTS_PER_PHASE).await;
        load.stop_without_failures().await;
        first.signal("TERM");
        exits_cleanly(&mut first.child, "the first process").await;
    });
}

/// A `gantry` serving one HTTP port (on an ephemeral port) to `origin`, once ready, and the
/// port's address.
async fn first_gantry(dir: &std::path::Path, origin: SocketAddr) -> (Running, SocketAddr) {
    let first_config = dir.join("first.yaml");
    std::fs::write(&first_config, config(0, origin)).expect("write");
    let mut first = Running::start(&first_config);
    let proxy = first.address("listening").await;
    first.log("ready").await;
    (first, proxy)
}

/// `gantry` logs why it cannot start (naming what it says, and how to take over) and exits 1.
async fn refuses_to_start(gantry: &mut Running, naming: &str) {
    let refusal = gantry.log_starting("cannot start: ").await;
    let message = refusal["message"].as_str().unwrap_or_default();
    for expected in [naming, "--takeover"] {
        assert!(message.contains(expected), "{expected:?} in {message:?}");
    }
    let exit = tokio::time::timeout(Duration::from_secs(30), gantry.child.wait())
        .await
        .expect("the process exits")
        .expect("wait");
    assert_eq!(exit.code(), Some(1), "it fails: {exit}");
}

/// One HTTP port on 127.0.0.1:`port` to `origin`, and the admin endpoint on a port of its own.
fn config(port: u16, origin: SocketAddr) -> String {
    format!(
        "admin: {{ listen: \"127.0.0.1:0\" }}\nservices:\n  - name: web\n    address: 127.0.0.1\n    ports:\n      - {{ name: http, port: {port}, protocol: http, backends: [\"{origin}\"] }}\n"
    )
}

/// The next datagram on the service manager's socket.
async fn notification(manager: &UnixDatagram) -> String {
    let mut buffer = [0u8; 512];
    let len = tokio::time::timeout(Duration::from_secs(30), manager.recv(&mut buffer))
        .await
        .expect("a notification")
        .expect("recv");
    String::from_utf8_lossy(&buffer[..len]).into_owned()
}

pub async fn exits_cleanly(child: &mut tokio::process::Child, what: &str) {
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("{what} drains and exits"))
        .expect("wait");
    assert!(exit.success(), "{what} exits 0: {exit}");
}

/// The process that took over: not the test's child, so stopped by pid, and killed if the
/// test fails first.
pub struct Successor(pub u32);

impl Successor {
    pub async fn stop(self) {
        let pid = nix::unistd::Pid::from_raw(self.0 as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
        eventually("the new process exits", || async { !alive(self.0) }).await;
    }
}

impl Drop for Successor {
    fn drop(&mut self) {
        if alive(self.0) {
            let pid = nix::unistd::Pid::from_raw(self.0 as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        }
    }
}

/// Whether a process runs (a zombie waiting for its reaper does not).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

/// Clients requesting through the proxy on a new connection each time, counting answers
/// and keeping every failure.
struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    clients: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let clients = (0..CLIENTS)
            .map(|_| {
                let (stop, answered, failures) = (stop.clone(), answered.clone(), failures.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match origin_behind(proxy).await.as_deref() {
                            Some("origin") => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            other => failures.lock().expect("lock").push(format!("{other:?}")),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            failures,
            clients,
        }
    }

    fn count(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Waits until `count` requests were answered in all.
    async fn answered(&self, count: u64) {
        eventually(&format!("{count} requests answered"), || async {
            self.count() >= count
        })
        .await;
    }

    async fn stop_without_failures(self) {
        self.stop.store(true, Ordering::Relaxed);
        for client in self.clients {
            client.await.expect("client");
        }
        let failures = self.failures.lock().expect("lock").clone();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed: {:?}",
            failures.len(),
            self.answered.load(Ordering::Relaxed) + failures.len() as u64,
            &failures[..failures.len().min(10)]
        );
    }
}
