//! Telling the service manager that Gantry is ready, and handing a running Gantry over to a new
//! process of the (possibly upgraded) binary without a refused connection.
//!
//! Readiness follows systemd's notification protocol (`sd_notify`): with `NOTIFY_SOCKET` set
//! (a unit of `Type=notify`), a datagram `READY=1` once the first configuration serves.
//!
//! The handover, on SIGUSR2: Gantry starts its own command line again (`argv[0]`, which is the
//! new binary once the file was replaced) as a child, the *successor*. The successor binds the
//! same ports beside this process (they share them, `SO_REUSEPORT`) and, once it serves,
//! reports ready to this process instead of to the service manager, over a socket named in
//! `GANTRY_HANDOVER_SOCKET`. This process then passes `MAINPID=<successor>` and `READY=1` on
//! to the service manager (it is still the unit's main process, so `NotifyAccess=main` is
//! enough), and drains. A successor that exits or is not ready within
//! [`SUCCESSOR_READY_TIMEOUT`] is stopped and this process keeps serving.

use std::os::fd::{AsRawFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, setsockopt, sockopt, ControlMessageOwned, MsgFlags, UnixAddr, UnixCredentials,
};
use tokio::io::Interest;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

/// The variable naming the socket a successor reports ready on (an abstract socket name).
const HANDOVER_SOCKET: &str = "GANTRY_HANDOVER_SOCKET";

/// How long a successor may take to serve: loading the configuration, compiling plugins that
/// are not in the cache, and binding. A successor still starting then is stopped.
pub const SUCCESSOR_READY_TIMEOUT: Duration = Duration::from_secs(300);

/// Why a handover did not happen; the running process keeps serving in every case.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    /// The socket the successor reports on could not be made or read.
    #[error("cannot make or read the handover socket: {0}")]
    Socket(std::io::Error),
    /// The command line could not be started again.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// `argv[0]`.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The successor ended before reporting ready (a configuration it refuses, a port it
    /// cannot bind): its own log says why.
    #[error("the new process exited ({0}) before it was ready")]
    ExitedEarly(ExitStatus),
    /// The successor did not report ready in time.
    #[error("the new process was not ready within {}s and was stopped", .0.as_secs())]
    NotReady(Duration),
    /// This process began stopping first.
    #[error("cancelled: this process is stopping; the new process was stopped")]
    Cancelled,
}

/// Reports that this process serves: to the process it takes over from, when it is a
/// successor, and otherwise to the service manager (nothing without `NOTIFY_SOCKET`). A
/// failure to report is logged: the process serves either way.
pub fn announce_ready() {
    let message = format!("READY=1\nMAINPID={}\n", std::process::id());
    let (target, to) = match std::env::var(HANDOVER_SOCKET) {
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

/// Starts a successor and waits until it serves. On success the successor is the service's
/// main process (as far as the service manager is told) and the caller should drain; on any
/// error the successor has been stopped. `cancel` abandons the handover.
pub async fn hand_over(cancel: CancellationToken) -> Result<u32, HandoverError> {
    static HANDOVERS: AtomicU64 = AtomicU64::new(0);
    let name = format!(
        "gantry-handover-{}-{}",
        std::process::id(),
        HANDOVERS.fetch_add(1, Ordering::Relaxed)
    );
    let socket = handover_socket(&name).map_err(HandoverError::Socket)?;
    let mut child = spawn_successor(&name)?;
    let pid = child.id().unwrap_or_default();
    tracing::info!(pid, "started the new process; waiting until it serves");
    let outcome = tokio::select! {
        ready = ready_from(&socket, pid) => ready.map(|()| pid).map_err(HandoverError::Socket),
        status = child.wait() => Err(match status {
            Ok(status) => HandoverError::ExitedEarly(status),
            Err(err) => HandoverError::Socket(err),
        }),
        _ = tokio::time::sleep(SUCCESSOR_READY_TIMEOUT) => {
            Err(HandoverError::NotReady(SUCCESSOR_READY_TIMEOUT))
        }
        _ = cancel.cancelled() => Err(HandoverError::Cancelled),
    };
    match outcome {
        Ok(pid) => {
            if let Ok(socket) = std::env::var("NOTIFY_SOCKET") {
                let message = format!("MAINPID={pid}\nREADY=1\n");
                if let Err(err) = notify_socket(&socket).and_then(|a| send(&a, &message)) {
                    tracing::warn!("cannot tell the service manager the new main process: {err}");
                }
            }
            Ok(pid)
        }
        Err(err) => {
            stop(&mut child).await;
            Err(err)
        }
    }
}

/// This process's own command line again, as a child told where to report ready.
fn spawn_successor(handover_socket: &str) -> Result<Child, HandoverError> {
    let mut args = std::env::args_os();
    let program = args.next().unwrap_or_else(|| "gantry".into());
    Command::new(&program)
        .args(args)
        .env(HANDOVER_SOCKET, handover_socket)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|source| HandoverError::Spawn {
            program: program.to_string_lossy().into_owned(),
            source,
        })
}

/// The socket a successor reports on, named `name` in the abstract namespace. The kernel
/// attaches each sender's credentials (SO_PASSCRED): only the successor itself can report it
/// ready, not another local process that found the name (in /proc/net/unix).
fn handover_socket(name: &str) -> std::io::Result<tokio::net::UnixDatagram> {
    let socket = UnixDatagram::bind_addr(&abstract_socket(name)?)?;
    setsockopt(&socket, sockopt::PassCred, &true)?;
    socket.set_nonblocking(true)?;
    tokio::net::UnixDatagram::from_std(socket)
}

/// Waits for the successor's report that it serves: a datagram sent by process `pid` itself
/// saying so. Anything else is ignored.
async fn ready_from(socket: &tokio::net::UnixDatagram, pid: u32) -> std::io::Result<()> {
    let mut buffer = [0u8; 256];
    loop {
        let (len, sender) = socket
            .async_io(Interest::READABLE, || {
                receive_with_sender(socket.as_raw_fd(), &mut buffer)
            })
            .await?;
        if reports_ready(&buffer[..len], sender, pid) {
            return Ok(());
        }
        tracing::debug!(?sender, "ignored a handover message");
    }
}

/// One datagram, and the process id the kernel says sent it.
fn receive_with_sender(fd: RawFd, buffer: &mut [u8]) -> std::io::Result<(usize, Option<u32>)> {
    let mut iov = [std::io::IoSliceMut::new(buffer)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let message = recvmsg::<UnixAddr>(fd, &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)?;
    let sender = message.cmsgs()?.find_map(|control| match control {
        ControlMessageOwned::ScmCredentials(credentials) => u32::try_from(credentials.pid()).ok(),
        _ => None,
    });
    Ok((message.bytes, sender))
}

/// Whether a datagram is the successor's `READY=1` with its own process id, sent by the
/// successor (`sender`, from the kernel) and not by anyone else on its behalf.
fn reports_ready(message: &[u8], sender: Option<u32>, pid: u32) -> bool {
    if sender != Some(pid) {
        return false;
    }
    let text = String::from_utf8_lossy(message);
    let mut lines = text.lines();
    let ready = lines.clone().any(|line| line == "READY=1");
    ready && lines.any(|line| line.strip_prefix("MAINPID=") == Some(&pid.to_string()))
}

/// Stops a successor that will not take over, and reaps it.
async fn stop(child: &mut Child) {
    if let Some(pid) = child.id() {
        // SIGTERM first: it may hold sockets and would drain what it accepted.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        if tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .is_ok()
        {
            return;
        }
    }
    let _ = child.kill().await;
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
    fn only_ready_from_the_successor_with_its_own_pid_counts() {
        let from = Some(42);
        assert!(reports_ready(b"READY=1\nMAINPID=42\n", from, 42));
        assert!(reports_ready(b"MAINPID=42\nREADY=1", from, 42));
        assert!(!reports_ready(b"READY=1\nMAINPID=43\n", from, 42));
        assert!(!reports_ready(b"READY=1\n", from, 42));
        assert!(!reports_ready(b"MAINPID=42\nSTATUS=starting\n", from, 42));
        // Another process saying it for the successor, or a sender the kernel did not name.
        assert!(!reports_ready(b"READY=1\nMAINPID=42\n", Some(7), 42));
        assert!(!reports_ready(b"READY=1\nMAINPID=42\n", None, 42));
    }

    /// The sender of a report is the kernel's word: this process, here.
    #[tokio::test]
    async fn the_handover_socket_learns_who_sent_a_report() {
        let name = format!("gantry-handover-test-{}", std::process::id());
        let socket = handover_socket(&name).expect("socket");
        let ours = std::process::id();
        send(
            &abstract_socket(&name).expect("name"),
            &format!("READY=1\nMAINPID={ours}\n"),
        )
        .expect("send");
        tokio::time::timeout(Duration::from_secs(10), ready_from(&socket, ours))
            .await
            .expect("the report is accepted: the kernel named its sender")
            .expect("our own report");
    }

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
