//! Gantry's routes must not outlive Gantry: the daemon would go on announcing addresses that
//! nobody serves. Every Gantry that announces holds a shared lock on `owner.lock` in its
//! routing folder for as long as it lives, and the kernel lets go of it however the process
//! ends, `kill -9` included. A guard process (`gantry routing-guard`, one per folder) waits
//! for the exclusive lock, which it gets only once no Gantry holds the shared one, then
//! withdraws: BIRD's routes files emptied and BIRD reconfigured; for keepalived, the track
//! file says the appliance does not serve, and another takes the addresses.
//!
//! A successor started by a handover takes its own shared lock before its predecessor exits,
//! so a handover withdraws nothing. A Gantry that starts while a guard is withdrawing waits
//! for it (milliseconds) before it announces, so a guard never withdraws a new Gantry's
//! routes. systemd's `ExecStopPost=gantry withdraw-routes` does the same job when the whole
//! service stops, guard included (`withdraw_if_unowned`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};

use super::daemon::Withdrawal;

/// The lock every announcing Gantry holds shared.
const OWNER_LOCK: &str = "owner.lock";

/// The lock the one guard of a folder holds.
const GUARD_LOCK: &str = "guard.lock";

/// Tries, one second apart, to have the daemon take the withdrawal.
const WITHDRAW_TRIES: u32 = 10;

/// The program started as the guard (`gantry` itself); unset, no guard is started (Gantry as
/// a library, in tests).
static GUARD_PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Guards are started with `program routing-guard ...` from now on.
pub fn enable(program: PathBuf) {
    let _ = GUARD_PROGRAM.set(program);
}

/// This process's shared hold on a routing folder.
#[derive(Debug)]
pub(crate) struct OwnerLock {
    _file: File,
    directory: PathBuf,
}

impl OwnerLock {
    /// The folder held.
    pub(crate) fn directory(&self) -> &Path {
        &self.directory
    }
}

/// Creates `directory` if need be and holds it shared, once no guard is withdrawing in it.
pub(crate) async fn hold(directory: &Path) -> std::io::Result<OwnerLock> {
    let directory = directory.to_owned();
    tokio::task::spawn_blocking(move || {
        create_directory(&directory)?;
        let file = open_lock(&directory.join(OWNER_LOCK))?;
        flock(&file, FlockOperation::LockShared)?;
        Ok(OwnerLock {
            _file: file,
            directory,
        })
    })
    .await
    .map_err(std::io::Error::other)?
}

fn create_directory(directory: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(directory)?;
    // BIRD (another user) reads the files in it.
    let mut permissions = std::fs::metadata(directory)?.permissions();
    if permissions.mode() & 0o005 != 0o005 {
        permissions.set_mode(permissions.mode() | 0o755);
        std::fs::set_permissions(directory, permissions)?;
    }
    Ok(())
}

fn open_lock(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

/// Starts the guard of `withdrawal`'s folder (it exits at once if one already watches it).
pub(crate) fn spawn(withdrawal: &Withdrawal) {
    let Some(program) = GUARD_PROGRAM.get() else {
        return;
    };
    let mut command = tokio::process::Command::new(program);
    command
        .arg("routing-guard")
        .args(withdrawal.args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        // Out of Gantry's process group: a Ctrl-C at a terminal stops Gantry, and the guard
        // must then withdraw.
        .process_group(0)
        .kill_on_drop(false);
    match command.spawn() {
        Ok(mut child) => {
            // Reaped when it exits (at once when another guard watches the folder).
            tokio::spawn(async move {
                let _ = child.wait().await;
            });
        }
        Err(err) => {
            tracing::error!(program = %program.display(), %err, "cannot start the routing guard: if Gantry dies, its routes stay announced until `gantry withdraw-routes` runs")
        }
    }
}

/// The guard's life: waits until no Gantry holds the folder, then withdraws. Returns at once
/// when another guard already watches it.
pub fn guard(withdrawal: &Withdrawal) -> std::io::Result<()> {
    let directory = withdrawal.directory();
    use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
    // It must outlive Gantry's drain, which a service manager's stop signal starts: those
    // signals stay pending, never delivered (SIGKILL still ends it).
    let mut stops = SigSet::empty();
    for stop in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        stops.add(stop);
    }
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stops), None).map_err(std::io::Error::from)?;
    let guard = open_lock(&directory.join(GUARD_LOCK))?;
    if flock(&guard, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(());
    }
    let owner = open_lock(&directory.join(OWNER_LOCK))?;
    flock(&owner, FlockOperation::LockExclusive)?;
    tracing::warn!(directory = %directory.display(), "no Gantry announces from here any more: withdrawing its routes");
    let withdrawn = withdraw(withdrawal);
    // The guard's lock goes first: a Gantry waiting for the owner lock then starts a guard
    // of its own that finds it free.
    drop(guard);
    drop(owner);
    withdrawn
}

/// Withdraws unless a Gantry holds the folder (for `ExecStopPost=`); returns whether it did.
pub fn withdraw_if_unowned(withdrawal: &Withdrawal) -> std::io::Result<bool> {
    let owner = match open_lock(&withdrawal.directory().join(OWNER_LOCK)) {
        Ok(owner) => owner,
        // No folder, no routes.
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(err) => return Err(err),
    };
    if flock(&owner, FlockOperation::NonBlockingLockExclusive).is_err() {
        return Ok(false);
    }
    withdraw(withdrawal)?;
    Ok(true)
}

/// Withdraws, trying for a while: a daemon that is down reads the files when it starts, so
/// it withdraws by itself.
fn withdraw(withdrawal: &Withdrawal) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    for attempt in 1..=WITHDRAW_TRIES {
        match runtime.block_on(withdrawal.run()) {
            Ok(()) => {
                tracing::info!(directory = %withdrawal.directory().display(), "routes withdrawn");
                return Ok(());
            }
            Err(err) if attempt == WITHDRAW_TRIES => return Err(std::io::Error::other(err)),
            Err(err) => {
                tracing::warn!(%err, "the routing daemon did not take the withdrawal; trying again");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    Ok(())
}
