//! The daemon the section names, whichever it is: [`give`] hands it an offer, [`retire`]
//! removes what a section that went gave it, and [`Withdrawal`] takes everything back for a
//! Gantry that is gone (the guard, `gantry withdraw-routes`).

use std::path::{Path, PathBuf};

use lb_config::Daemon;

use super::offer::{write_file, Announcement, DaemonError, Offer};
use super::{bird, keepalived};

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
