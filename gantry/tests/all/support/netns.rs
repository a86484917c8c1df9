//! A network namespace a test makes for itself (root and iproute2), deleted when dropped:
//! tests that need addresses, routes or kernel settings of their own get them there, never on
//! the host.

use std::future::Future;
use std::process::Command;

/// A network namespace with its loopback up.
pub struct Netns {
    name: String,
}

impl Netns {
    /// A new namespace, `gantry-PURPOSE-PID`.
    pub fn create(purpose: &str) -> Netns {
        let netns = Netns {
            name: format!("gantry-{purpose}-{}", std::process::id()),
        };
        ip(&["netns", "add", &netns.name]);
        netns.ip(&["link", "set", "lo", "up"]);
        netns
    }

    /// Its name, for `ip netns exec` and `ip ... netns NAME`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `PROGRAM` to be run inside the namespace (`ip netns exec NAME PROGRAM`).
    pub fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Sets kernel settings of the namespace (`net.ipv4.ip_forward=1`).
    pub fn sysctl(&self, settings: &[&str]) {
        let status = self
            .command("sysctl")
            .arg("-qw")
            .args(settings)
            .status()
            .expect("run sysctl");
        assert!(status.success(), "sysctl {settings:?}: {status}");
    }

    /// A runtime whose threads live in the namespace: what the tasks spawned on it bind,
    /// connect and start is there. Shut it down with `shutdown_background`.
    pub fn runtime(&self) -> tokio::runtime::Runtime {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter();
                    // Its workers start here, and inherit the namespace.
                    tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("runtime")
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// `ip -n NAME ARGS...`, which must succeed.
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// Runs `scenario` on a thread inside the namespace, on a runtime of its own: the threads,
    /// sockets and processes it starts are born there. A panic in it fails the caller.
    pub fn run<F, S>(&self, scenario: S)
    where
        S: FnOnce() -> F + Send,
        F: Future<Output = ()>,
    {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter();
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("runtime");
                    runtime.block_on(scenario());
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        });
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) {
        let file =
            std::fs::File::open(format!("/var/run/netns/{}", self.name)).expect("netns file");
        nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn ip(args: &[&str]) {
    let status = Command::new("ip")
        .args(args)
        .status()
        .expect("run `ip` (iproute2)");
    assert!(status.success(), "ip {}: {status}", args.join(" "));
}
