//! A routing daemon running in a namespace for the fabric: BIRD (on the router and on each
//! appliance with BGP) or keepalived (on each appliance with VRRP), killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::WAIT;
use crate::support::netns::Netns;

/// A daemon process in a namespace.
pub struct Daemon {
    child: Child,
    /// BIRD's control socket (none for keepalived).
    socket: Option<PathBuf>,
    log: PathBuf,
}

impl Daemon {
    /// BIRD on `config`, once it answers on its control socket.
    pub fn bird(netns: &Netns, dir: &Path, config: &str) -> Daemon {
        let path = dir.join("bird.conf");
        std::fs::write(&path, config).expect("write bird.conf");
        let socket = dir.join("bird.ctl");
        let child = netns
            .command("bird")
            .arg("-f")
            .arg("-c")
            .arg(&path)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(dir.join("bird.pid"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("start bird (Debian package bird2)");
        let bird = Daemon {
            child,
            socket: Some(socket),
            log: dir.join("bird.log"),
        };
        bird.until("BIRD did not start", |d| {
            d.birdc("show status").contains("Daemon is up")
        });
        bird
    }

    /// keepalived (VRRP only) on `config`, once it has written its pid file.
    pub fn keepalived(netns: &Netns, dir: &Path, config: &str) -> Daemon {
        let path = dir.join("keepalived.conf");
        std::fs::write(&path, config).expect("write keepalived.conf");
        let log = dir.join("keepalived.log");
        let output = std::fs::File::create(&log).expect("keepalived log");
        let child = netns
            .command("keepalived")
            .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
            .arg("--use-file")
            .arg(&path)
            .arg("--pid")
            .arg(dir.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(dir.join("vrrp.pid"))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log"))
            .stderr(output)
            .spawn()
            .expect("start keepalived (Debian package keepalived)");
        let keepalived = Daemon {
            child,
            socket: None,
            log,
        };
        keepalived.until("keepalived did not start", |_| {
            dir.join("keepalived.pid").exists() && dir.join("vrrp.pid").exists()
        });
        keepalived
    }

    fn until(&self, what: &str, ready: impl Fn(&Daemon) -> bool) {
        let started = Instant::now();
        while !ready(self) {
            assert!(started.elapsed() < WAIT, "{what}: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `birdc COMMAND`'s output (BIRD only).
    pub fn birdc(&self, command: &str) -> String {
        let Some(socket) = &self.socket else {
            return String::new();
        };
        let output = Command::new("birdc")
            .arg("-s")
            .arg(socket)
            .args(command.split(' '))
            .output()
            .expect("run birdc");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `kill -9`.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
