//! The process-wide sections: `admin:`, `runtime:` and `plugin_limits:`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::file::{AdminFile, PluginLimitsFile, RuntimeFile};
use crate::lenient::Lenient;
use crate::model::{Admin, AdminToken, PluginCache, PluginLimits, Runtime};
use crate::problems::{FieldPath, Problems};

use super::settings::{set_duration, DurationRange};
use super::{parse_socket_addr, take};

/// The admin listener's default: loopback only, so a fresh install exposes nothing.
pub const DEFAULT_ADMIN_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);

const HOUR: Duration = Duration::from_secs(3600);

/// Longest admin token accepted, in bytes.
const MAX_TOKEN_BYTES: usize = 4096;
/// Shortest admin token accepted: a guessable token protects nothing.
const MIN_TOKEN_BYTES: usize = 16;

pub(super) fn build_admin(
    file: Option<Lenient<AdminFile>>,
    base_dir: &Path,
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
    let token = match (file.token_file, file.token_env) {
        (Some(_), Some(_)) => {
            p.push(path, "`token_file` and `token_env` both given: choose one");
            None
        }
        (Some(name), None) => {
            let file = base_dir.join(name);
            let at = path.field("token_file");
            match std::fs::read(&file) {
                Ok(bytes) => token(Some(file), "", &bytes, &at, p),
                Err(err) => {
                    p.push(&at, format!("cannot read {}: {err}", file.display()));
                    None
                }
            }
        }
        (None, Some(name)) => {
            let at = path.field("token_env");
            match std::env::var_os(&name) {
                Some(value) => token(None, &name, value.as_encoded_bytes(), &at, p),
                None => {
                    p.push(&at, format!("the environment has no {name}"));
                    None
                }
            }
        }
        (None, None) => None,
    };
    let open = file.open.unwrap_or(false);
    if open && token.is_some() {
        p.push(
            &path.field("open"),
            "`open` and a token both given: a token is asked for, or the endpoint is open; choose one",
        );
    }
    Admin {
        listen,
        token,
        open,
    }
}

/// The token in `bytes` (surrounding whitespace removed) from `file` or else the variable
/// `env`, or a problem at `at`.
fn token(
    file: Option<PathBuf>,
    env: &str,
    bytes: &[u8],
    at: &FieldPath,
    p: &mut Problems,
) -> Option<AdminToken> {
    let source = match &file {
        Some(file) => file.display().to_string(),
        None => env.to_owned(),
    };
    let secret = bytes.trim_ascii();
    if !(MIN_TOKEN_BYTES..=MAX_TOKEN_BYTES).contains(&secret.len()) {
        p.push(
            at,
            format!(
                "the token from {source} is {} bytes; it must be {MIN_TOKEN_BYTES} to {MAX_TOKEN_BYTES}",
                secret.len()
            ),
        );
        return None;
    }
    // It travels in a header: visible ASCII only.
    if !secret.iter().all(|b| b.is_ascii_graphic()) {
        p.push(
            at,
            format!("the token from {source} must be printable ASCII without spaces"),
        );
        return None;
    }
    Some(AdminToken::new(file, env, secret.to_vec()))
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
