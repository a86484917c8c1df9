//! The process-wide sections: `admin:`, `runtime:` and `plugin_limits:`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use crate::file::{AdminFile, PluginLimitsFile, RuntimeFile};
use crate::lenient::Lenient;
use crate::model::{Admin, PluginCache, PluginLimits, Runtime};
use crate::problems::{FieldPath, Problems};

use super::settings::{set_duration, DurationRange};
use super::{parse_socket_addr, take};

/// The admin listener's default: loopback only, so a fresh install exposes nothing.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);

const HOUR: Duration = Duration::from_secs(3600);

pub(super) fn build_admin(
    file: Option<Lenient<AdminFile>>,
    path: &FieldPath,
    p: &mut Problems,
) -> Admin {
    let file = take(file, path, p).unwrap_or_default();
    let listen = match file.listen {
        Some(text) => {
            parse_socket_addr(&text, &path.field("listen"), p).unwrap_or(DEFAULT_ADMIN_LISTEN)
        }
        None => DEFAULT_ADMIN_LISTEN,
    };
    Admin { listen }
}

pub(super) fn build_runtime(
    file: Option<Lenient<RuntimeFile>>,
    base_dir: &Path,
    path: &FieldPath,
    p: &mut Problems,
) -> Runtime {
    let file = take(file, path, p).unwrap_or_default();
    if let Some(workers) = file.workers {
        if !(1..=1024).contains(&workers) {
            p.push(
                &path.field("workers"),
                format!("{workers} is out of range 1..=1024"),
            );
        }
    }
    let mut runtime = Runtime {
        workers: file.workers,
        shutdown_grace: Duration::from_secs(30),
        watch_interval: Duration::from_secs(2),
        access_log: file.access_log.unwrap_or(false),
        plugin_cache: match file.plugin_cache.as_deref() {
            None | Some("auto") => PluginCache::Auto,
            Some("off") => PluginCache::Off,
            Some("") => {
                p.push(&path.field("plugin_cache"), "a folder, `auto` or `off`");
                PluginCache::Off
            }
            Some(folder) => PluginCache::Folder(base_dir.join(folder)),
        },
    };
    set_duration(
        file.shutdown_grace,
        &mut runtime.shutdown_grace,
        DurationRange {
            min: Duration::ZERO,
            max: HOUR,
        },
        &path.field("shutdown_grace"),
        p,
    );
    set_duration(
        file.watch_interval,
        &mut runtime.watch_interval,
        DurationRange {
            min: Duration::from_millis(100),
            max: HOUR,
        },
        &path.field("watch_interval"),
        p,
    );
    runtime
}

pub(super) fn build_plugin_limits(
    file: Option<PluginLimitsFile>,
    path: &FieldPath,
    p: &mut Problems,
) -> PluginLimits {
    let file = file.unwrap_or_default();
    let mut limits = PluginLimits {
        call_deadline: Duration::from_millis(2),
        setup_deadline: Duration::from_secs(1),
        memory_bytes: 16 << 20,
        quarantine_after: 10,
    };
    let min = Duration::from_micros(100);
    set_duration(
        file.call_deadline,
        &mut limits.call_deadline,
        DurationRange {
            min,
            max: Duration::from_secs(1),
        },
        &path.field("call_deadline"),
        p,
    );
    set_duration(
        file.setup_deadline,
        &mut limits.setup_deadline,
        DurationRange {
            min,
            max: Duration::from_secs(60),
        },
        &path.field("setup_deadline"),
        p,
    );
    match file.memory_mib {
        Some(mib @ 1..=4096) => limits.memory_bytes = u64::from(mib) << 20,
        Some(mib) => p.push(
            &path.field("memory_mib"),
            format!("{mib} is out of range 1..=4096"),
        ),
        None => {}
    }
    match file.quarantine_after {
        Some(n @ 1..=1_000_000) => limits.quarantine_after = n,
        Some(n) => p.push(
            &path.field("quarantine_after"),
            format!("{n} is out of range 1..=1000000"),
        ),
        None => {}
    }
    limits
}
