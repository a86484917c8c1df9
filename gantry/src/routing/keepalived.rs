//! keepalived, for networks without BGP: one appliance at a time holds the addresses (VRRP),
//! and another takes them over, with gratuitous ARP and unsolicited neighbour advertisements,
//! when it fails. Gantry writes two files in its folder, which the operator's
//! `keepalived.conf` names:
//!
//! - `addresses.conf`, one address per line, included in the instance's
//!   `virtual_ipaddress_excluded` (excluded addresses are not in adverts, so two appliances
//!   whose lists differ for a moment never both become master). keepalived reads it when it
//!   reloads: Gantry sends it SIGHUP when the list changes, given its pid file.
//! - `ready`, the instance's `track_file` with weight 0: `0` while Gantry serves, `1` when it
//!   stops or dies (written by the guard), which puts the instance in FAULT: it gives the
//!   addresses up at once and another appliance takes them.

use std::net::IpAddr;
use std::path::Path;

use lb_config::Vrrp;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::offer::{write_file, DaemonError, Offer};

/// The addresses, for `virtual_ipaddress_excluded`.
pub(crate) const ADDRESSES_FILE: &str = "addresses.conf";

/// The track file: `0` serving, `1` not.
pub(crate) const READY_FILE: &str = "ready";

/// The lines of `addresses.conf` for `offer`.
pub(crate) fn addresses(offer: &Offer) -> String {
    offer
        .wanted
        .iter()
        .map(|a| match a.address {
            IpAddr::V4(ip) => format!("{ip}/32\n"),
            IpAddr::V6(ip) => format!("{ip}/128\n"),
        })
        .collect()
}

/// Writes `offer` for keepalived. Serving: the addresses first (with a reload when they
/// changed), then `ready`. Withdrawing: `ready` alone, so the addresses move to another
/// appliance as one.
pub(crate) fn give(vrrp: &Vrrp, offer: &Offer) -> Result<(), DaemonError> {
    if offer.withdrawing {
        return write_ready(&vrrp.directory, false);
    }
    let path = vrrp.directory.join(ADDRESSES_FILE);
    let lines = addresses(offer);
    if std::fs::read_to_string(&path).ok().as_deref() != Some(&lines) {
        write_file(&path, &lines)?;
        if let Some(pid_file) = &vrrp.pid_file {
            reload(pid_file)?;
        }
    }
    write_ready(&vrrp.directory, true)
}

/// Says whether this appliance serves, in the track file.
pub(crate) fn write_ready(directory: &Path, serving: bool) -> Result<(), DaemonError> {
    write_file(
        &directory.join(READY_FILE),
        if serving { "0\n" } else { "1\n" },
    )
}

/// Has the keepalived of `pid_file` read its configuration again (SIGHUP): it keeps its
/// state, and adds or removes only the addresses that changed.
fn reload(pid_file: &Path) -> Result<(), DaemonError> {
    let fail = |source| DaemonError::Reload {
        pid_file: pid_file.to_owned(),
        source,
    };
    let text = std::fs::read_to_string(pid_file).map_err(fail)?;
    let pid: i32 = text.trim().parse().map_err(|_| {
        fail(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("`{}` is not a pid", text.trim()),
        ))
    })?;
    kill(Pid::from_raw(pid), Signal::SIGHUP).map_err(|errno| fail(errno.into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routing::offer::Announcement;

    #[test]
    fn serving_writes_the_addresses_then_ready_and_withdrawing_only_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let vrrp = Vrrp {
            directory: dir.path().to_owned(),
            pid_file: None,
        };
        let offer = Offer {
            wanted: ["203.0.113.10", "2001:db8::1"]
                .iter()
                .map(|ip| Announcement {
                    address: ip.parse().expect("ip"),
                    communities: Vec::new(),
                    local_preference: None,
                })
                .collect(),
            withdrawing: false,
        };
        give(&vrrp, &offer).expect("given");
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).expect("file");
        assert_eq!(read(ADDRESSES_FILE), "203.0.113.10/32\n2001:db8::1/128\n");
        assert_eq!(read(READY_FILE), "0\n");
        give(
            &vrrp,
            &Offer {
                wanted: Vec::new(),
                withdrawing: true,
            },
        )
        .expect("withdrawn");
        assert_eq!(read(READY_FILE), "1\n");
        assert_eq!(read(ADDRESSES_FILE), "203.0.113.10/32\n2001:db8::1/128\n");
        // A pid file that names no process is an error to report, not a panic.
        std::fs::write(dir.path().join("k.pid"), "not a pid\n").expect("pid file");
        let vrrp = Vrrp {
            pid_file: Some(dir.path().join("k.pid")),
            ..vrrp
        };
        let error = give(&vrrp, &Offer::default()).expect_err("no pid");
        assert!(error.to_string().contains("is not a pid"), "{error}");
    }
}
