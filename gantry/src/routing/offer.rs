//! What the daemons are given, and how: the addresses Gantry wants announced (each with its
//! pool's attributes), whether it is stopping, the files it writes for a daemon (whole, at
//! once, readable by the daemon's user), and why a daemon did not take an offer.

use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use lb_config::Community;

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
