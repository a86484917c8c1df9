//! Telling the service manager that Gantry is ready, and SIGUSR2: starting a new process of the
//! (possibly upgraded) binary that takes over from this one ([`crate::takeover`]).
//!
//! Readiness follows systemd's notification protocol (`sd_notify`): with `NOTIFY_SOCKET` set
//! (a unit of `Type=notify`), a datagram `READY=1` once the first configuration serves.
//!
//! On SIGUSR2, Gantry starts its own command line again (`argv[0]`, which is the new binary
//! once the file was replaced) as a child told to take over (`GANTRY_TAKEOVER=1`). The child
//! takes the sockets over through the control socket; once it serves, this process tells the
//! service manager `MAINPID=<child>` and `READY=1` (it is still the unit's main process, so
//! `NotifyAccess=main` is enough) and drains. A child that exits first, or does not take over
//! within [`SUCCESSOR_READY_TIMEOUT`], is stopped and this process keeps serving.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

pub use crate::takeover::SUCCESSOR_READY_TIMEOUT;

/// Set in a child started by SIGUSR2: it takes over from its parent.
pub const TAKEOVER_ENV: &str = "GANTRY_TAKEOVER";

/// Set by Gantry versions before the control socket in the child they start on SIGUSR2: the
/// abstract socket the child reports ready on.
const LEGACY_HANDOVER_SOCKET: &str = "GANTRY_HANDOVER_SOCKET";

/// Why a handover did not happen; the running process keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The command line could not be started again.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The successor ended before taking over (a configuration it refuses, a port it cannot
    /// bind): its own log says why.
    #[error("the new process exited ({0}) before it took over")]
    ExitedEarly(ExitStatus),
    /// The successor did not take over in time.
    #[error("the new process did not take over within {}s and was stopped", .0.as_secs())]
    NotReady(Duration),
}

/// Whether this process was started by SIGUSR2 to take over from its parent.
pub fn started_to_take_over() -> bool {
    std::env::var_os(TAKEOVER_ENV).is_some_and(|v| v == "1")
}

/// Whether this process was started by a Gantry from before the control socket (its new
/// process binds beside it and reports ready on a socket it names).
pub fn started_by_a_legacy_parent() -> bool {
    std::env::var_os(LEGACY_HANDOVER_SOCKET).is_some()
}

/// Reports that this process serves, to the service manager (nothing without `NOTIFY_SOCKET`).
/// A process started by SIGUSR2 does not: its parent tells the manager once the takeover is
/// done. A child of a Gantry from before the control socket reports to that parent instead. A
/// failure to report is logged: the process serves either way.
pub fn announce_ready() {
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    if started_to_take_over() {
        return;
    }
    let (target, to) = match std::env::var(LEGACY_HANDOVER_SOCKET) {
        Ok(name) => (abstract_socket(&name), "the process it takes over from"),
        Err(_) => match std::env::var("NOTIFY_SOCKET") {
            Ok(socket) => (notify_socket(&socket), "the service manager"),
            Err(_) => return,
        },
    };
    if let Err(err) = target.and_then(|address| send(&address, &message)) {
        tracing::warn!("cannot report ready to {to}: {err}");
    }
}

/// A new process started by SIGUSR2, taking over.
pub struct Successor {
    child: Child,
    pid: u32,
    /// When it is given up if it has not taken over.
    deadline: tokio::time::Instant,
}

impl Successor {
    /// Starts this process's own command line again as a child told to take over.
    pub fn spawn() -> Result<Successor, HandoverError> {
        let mut args = std::env::args_os();
        let program = args.next().unwrap_or_else(|| "gantry".into());
        let child = Command::new(&program)
            .args(args)
            .env(TAKEOVER_ENV, "1")
            .env_remove(LEGACY_HANDOVER_SOCKET)
            .stdin(Stdio::null())
            .spawn()
            .map_err(|source| HandoverError::Spawn {
                program: program.to_string_lossy().into_owned(),
                source,
            })?;
        let pid = child.id().unwrap_or_default();
        tracing::info!(pid, "started the new process; waiting until it takes over");
        Ok(Successor {
            child,
            pid,
            deadline: tokio::time::Instant::now() + SUCCESSOR_READY_TIMEOUT,
        })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Returns with the reason the handover failed: the child exited, or did not take over in
    /// time. (It does not return while the child runs within its time; cancel-safe.)
    pub async fn failed(&mut self) -> HandoverError {
        tokio::select! {
            status = self.child.wait() => match status {
                Ok(status) => HandoverError::ExitedEarly(status),
                Err(_) => HandoverError::NotReady(SUCCESSOR_READY_TIMEOUT),
            },
            _ = tokio::time::sleep_until(self.deadline) => HandoverError::NotReady(SUCCESSOR_READY_TIMEOUT),
        }
    }

    /// The child took over: tells the service manager it is the main process now. The child
    /// runs on after this process exits.
    pub fn took_over(self) {
        if let Ok(socket) = std::env::var("NOTIFY_SOCKET") {
            let message = format!("MAINPID={}\nREADY=1\n", self.pid);
            if let Err(err) = notify_socket(&socket).and_then(|a| send(&a, &message)) {
                tracing::warn!("cannot tell the service manager the new main process: {err}");
            }
        }
    }

    /// Stops a child that will not take over, and reaps it.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            // SIGTERM first: it may hold sockets and would drain what it accepted.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

/// `NOTIFY_SOCKET`: a path, or an abstract name after `@`.
fn notify_socket(value: &str) -> std::io::Result<SocketAddr> {
    match value.strip_prefix('@') {
        Some(name) => abstract_socket(name),
        None => SocketAddr::from_pathname(value),
    }
}

fn abstract_socket(name: &str) -> std::io::Result<SocketAddr> {
    SocketAddr::from_abstract_name(name.as_bytes())
}

fn send(address: &SocketAddr, message: &str) -> std::io::Result<()> {
    UnixDatagram::unbound()?.send_to_addr(message.as_bytes(), address)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notify_socket_names_a_path_or_an_abstract_socket() {
        let path = notify_socket("/run/systemd/notify").expect("path");
        assert_eq!(
            path.as_pathname(),
            Some(std::path::Path::new("/run/systemd/notify"))
        );
        let named = notify_socket("@gantry-test").expect("abstract");
        assert_eq!(named.as_abstract_name(), Some(&b"gantry-test"[..]));
    }
}
