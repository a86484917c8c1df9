//! What the two daemons share: the routes offered to them, the files Gantry writes for them
//! (whole, at once, readable by the daemon's user), and why a daemon did not take an offer.
//! [`give`] hands an offer to whichever daemon the section names, [`Withdrawal`] takes
//! everything back for a Gantry that is gone (the guard, `gantry withdraw-routes`).

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lb_config::{Community, Daemon};

use super::{bird, keepalived};

/// One address to announce, with its pool's attributes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Announcement {
    pub(crate) address: IpAddr,
    pub(crate) communities: Vec<Community>,
    pub(crate) local_preference: Option<u32>,
}

/// What the daemon is given: the addresses wanted, or (`withdrawing`) that Gantry stops.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Offer {
    pub(crate) wanted: Vec<Announcement>,
    pub(crate) withdrawing: bool,
}

/// Why a daemon did not take an offer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DaemonError {
    /// Its files could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// BIRD's control socket could not be reached or spoke out of turn.
    #[error("BIRD's control socket {}: {source}", socket.display())]
    Socket {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
    /// BIRD answered with an error (its configuration does not parse, say).
    #[error("BIRD refused to reconfigure: {0}")]
    Refused(String),
    /// keepalived could not be told to reload.
    #[error("cannot have keepalived reload (pid file {}): {source}", pid_file.display())]
    Reload {
        /// Its pid file.
        pid_file: PathBuf,
        /// What went wrong.
        source: std::io::Error,
    },
}

/// Hands `offer` to the daemon; `first` when nothing was given yet under this section (BIRD
/// then gets its sessions too).
pub(crate) async fn give(daemon: &Daemon, offer: &Offer, first: bool) -> Result<(), DaemonError> {
    match daemon {
        Daemon::Bird(bgp) => {
            if first {
                write_file(
                    &bgp.directory.join(bird::PROTOCOLS_FILE),
                    &bird::protocols(bgp),
                )?;
            }
            let routes: &[Announcement] = if offer.withdrawing {
                &[]
            } else {
                &offer.wanted
            };
            bird::write_routes(&bgp.directory, routes)?;
            bird::configure(&bgp.control_socket).await
        }
        Daemon::Keepalived(vrrp) => keepalived::give(vrrp, offer),
    }
}

/// Removes what a section that went (or moved) gave its daemon: BIRD's sessions and routes;
/// keepalived's addresses (and this appliance stops competing for them).
pub(crate) async fn retire(daemon: &Daemon) -> Result<(), DaemonError> {
    match daemon {
        Daemon::Bird(bgp) => {
            bird::write_routes(&bgp.directory, &[])?;
            write_file(&bgp.directory.join(bird::PROTOCOLS_FILE), "")?;
            bird::configure(&bgp.control_socket).await
        }
        Daemon::Keepalived(vrrp) => keepalived::give(
            vrrp,
            &Offer {
                wanted: Vec::new(),
                withdrawing: true,
            },
        ),
    }
}

/// What it takes to withdraw a gone Gantry's routes: only the daemon and where to find it,
/// as the guard is told on its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Withdrawal {
    /// Empty the routes files, have BIRD reconfigure.
    Bird {
        /// Gantry's folder.
        directory: PathBuf,
        /// BIRD's control socket.
        control_socket: PathBuf,
    },
    /// Say the appliance does not serve: keepalived (its track file) lets another hold the
    /// addresses.
    Keepalived {
        /// Gantry's folder.
        directory: PathBuf,
    },
}

impl Withdrawal {
    /// The withdrawal of what `daemon` was given.
    pub fn of(daemon: &Daemon) -> Withdrawal {
        match daemon {
            Daemon::Bird(bgp) => Withdrawal::Bird {
                directory: bgp.directory.clone(),
                control_socket: bgp.control_socket.clone(),
            },
            Daemon::Keepalived(vrrp) => Withdrawal::Keepalived {
                directory: vrrp.directory.clone(),
            },
        }
    }

    /// Gantry's folder.
    pub fn directory(&self) -> &Path {
        match self {
            Withdrawal::Bird { directory, .. } | Withdrawal::Keepalived { directory } => directory,
        }
    }

    /// Its arguments on the guard's command line (after `routing-guard`).
    pub(crate) fn args(&self) -> Vec<std::ffi::OsString> {
        match self {
            Withdrawal::Bird {
                directory,
                control_socket,
            } => vec![
                "--daemon".into(),
                "bird".into(),
                "--directory".into(),
                directory.into(),
                "--control-socket".into(),
                control_socket.into(),
            ],
            Withdrawal::Keepalived { directory } => vec![
                "--daemon".into(),
                "keepalived".into(),
                "--directory".into(),
                directory.into(),
            ],
        }
    }

    /// Withdraws once.
    pub(crate) async fn run(&self) -> Result<(), DaemonError> {
        match self {
            Withdrawal::Bird {
                directory,
                control_socket,
            } => {
                bird::write_routes(directory, &[])?;
                bird::configure(control_socket).await
            }
            // keepalived watches its track file: no reload needed.
            Withdrawal::Keepalived { directory } => keepalived::write_ready(directory, false),
        }
    }
}

/// Replaces `path` with `contents` at once (a reader sees the old file or the new one), as the
/// daemon (another user) may read it: 0644.
pub(crate) fn write_file(path: &Path, contents: &str) -> Result<(), DaemonError> {
    let fail = |source| DaemonError::Write {
        path: path.to_owned(),
        source,
    };
    let directory = path.parent().unwrap_or(Path::new("."));
    let temporary = directory.join(format!(
        ".{}.{}",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("gantry"),
        std::process::id()
    ));
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o644)
            .open(&temporary)
            .map_err(fail)?;
        // The process's umask may have narrowed the mode.
        file.set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(fail)?;
        file.write_all(contents.as_bytes()).map_err(fail)?;
        file.sync_all().map_err(fail)?;
    }
    std::fs::rename(&temporary, path).map_err(fail)
}
