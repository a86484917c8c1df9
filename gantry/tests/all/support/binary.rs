//! The `gantry` binary run as a process by a test: started on a configuration file, its JSON
//! log lines read as they come, signalled, and killed if the test ends early.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

/// The binary cargo built for these tests.
pub const GANTRY: &str = env!("CARGO_BIN_EXE_gantry");

/// A `gantry run` process, killed if the test ends early; its JSON log lines arrive on a
/// channel.
pub struct Running {
    pub child: Child,
    logs: mpsc::UnboundedReceiver<serde_json::Value>,
    /// The control socket it holds (each test process's own, so tests run side by side).
    pub control_socket: String,
}

/// A control socket name no other test uses.
pub fn unique_control_socket() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "gantry-test-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Running {
    pub fn start(config: &Path) -> Running {
        Running::start_with_env(config, &[])
    }

    /// [`Running::start`] with these environment variables added.
    pub fn start_with_env(config: &Path, env: &[(&str, &Path)]) -> Running {
        Running::start_with(config, &unique_control_socket(), &[], env)
    }

    /// `gantry run` holding the control socket `control_socket`, with these further arguments
    /// (`--takeover`) and environment variables.
    pub fn start_with(
        config: &Path,
        control_socket: &str,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Running {
        Running::spawn(Command::new(GANTRY), config, control_socket, args, env)
    }

    /// `gantry run` on `config` inside the network namespace `netns`.
    pub fn start_in(netns: &str, config: &Path) -> Running {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", netns, GANTRY]);
        Running::spawn(command, config, &unique_control_socket(), &[], &[])
    }

    fn spawn(
        mut command: Command,
        config: &Path,
        control_socket: &str,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Running {
        let mut child = command
            .args([
                "--log-format",
                "json",
                "run",
                "--control-socket",
                control_socket,
            ])
            .args(args)
            .arg("--config")
            .arg(config)
            .envs(env.iter().copied())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn gantry");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, logs) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Ok(value) = serde_json::from_str(&line) {
                    let _ = tx.send(value);
                }
            }
        });
        Running {
            child,
            logs,
            control_socket: control_socket.to_owned(),
        }
    }

    /// Waits for a log line with this message, returning it.
    pub async fn log(&mut self, message: &str) -> serde_json::Value {
        self.log_where(message, |text| text == message).await
    }

    /// Waits for a log line whose message starts with `prefix`, returning it.
    pub async fn log_starting(&mut self, prefix: &str) -> serde_json::Value {
        self.log_where(prefix, |text| text.starts_with(prefix))
            .await
    }

    /// Every log line up to and including the one with this message.
    pub async fn logs_until(&mut self, message: &str) -> Vec<serde_json::Value> {
        let wait = async {
            let mut seen = Vec::new();
            while let Some(line) = self.logs.recv().await {
                let done = line["message"].as_str() == Some(message);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            panic!("gantry exited before logging {message:?}");
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("no {message:?} log line"))
    }

    async fn log_where(
        &mut self,
        message: &str,
        matches: impl Fn(&str) -> bool,
    ) -> serde_json::Value {
        let wait = async {
            while let Some(line) = self.logs.recv().await {
                if line["message"].as_str().is_some_and(&matches) {
                    return line;
                }
            }
            panic!("gantry exited before logging {message:?}");
        };
        tokio::time::timeout(Duration::from_secs(20), wait)
            .await
            .unwrap_or_else(|_| panic!("no {message:?} log line"))
    }

    pub async fn address(&mut self, message: &str) -> SocketAddr {
        let line = self.log(message).await;
        line["address"]
            .as_str()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line}"))
    }

    pub fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// The process's resident memory now, in KiB (`VmRSS`).
    pub fn resident_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }
}
