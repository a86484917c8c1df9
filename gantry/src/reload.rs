//! The file source: reading the configuration file and handing it to [`Gantry::apply_file`]
//! ([`reload_from_file`], on SIGHUP and on change), which serves it beside the Kubernetes
//! source's services, and watching it: the
//! config file and every certificate, key and plugin file it names are polled every
//! `runtime.watch_interval` by content, which sees in-place edits, atomic renames and the
//! symlink swaps of Kubernetes-mounted secrets alike. An invalid file is logged and the running
//! config keeps serving until the files change again (or SIGHUP). Files are the only source
//! watched here; material from other sources arrives as models.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use lb_config::Change;
use tokio_util::sync::CancellationToken;

use crate::app::{FileApplyError, Gantry};
use lb_core::metrics::ReloadResult;

/// Why a reload from a file failed; the running model keeps serving.
pub type ReloadError = FileApplyError;

/// Loads `path` and applies it; on any error the running model keeps serving. When the
/// configuration file and every file it names are byte for byte what the last successful
/// reload (or the start) applied, nothing is loaded: an edit seen both by the file watcher and
/// by a SIGHUP reloads once. Counted in `gantry_config_reloads_total` by result (`success`,
/// `failure`, `unchanged`).
pub async fn reload_from_file(gantry: &Gantry, path: &Path) -> Result<Vec<Change>, ReloadError> {
    let mut applied = gantry.file_inputs().lock().await;
    // Taken before loading: an edit made while the file is read differs from it next time.
    let inputs = Baseline::before_loading(path).fingerprint;
    if *applied == Some(inputs) {
        gantry.metrics().reload(ReloadResult::Unchanged);
        tracing::info!(file = %path.display(), "reload: the files are as last applied; nothing to do");
        return Ok(Vec::new());
    }
    let started = std::time::Instant::now();
    let loaded = lb_config::load_builder(path);
    let load_ms = lb_core::logging::millis(started.elapsed());
    let result = match loaded {
        Ok(builder) => gantry.apply_file(builder).await,
        Err(err) => Err(ReloadError::from(err)),
    };
    let counted = match result {
        Ok(_) => ReloadResult::Success,
        Err(_) => ReloadResult::Failure,
    };
    gantry.metrics().reload(counted);
    match &result {
        Ok(changes) if changes.is_empty() => {
            tracing::info!(file = %path.display(), "reload: no change")
        }
        Ok(changes) => {
            tracing::info!(file = %path.display(), changes = changes.len(), load_ms, "reload applied")
        }
        Err(err) => {
            tracing::error!(file = %path.display(), "reload rejected, previous configuration keeps serving: {err}")
        }
    }
    if result.is_ok() {
        *applied = Some(inputs);
    }
    result
}

/// Records that the files of `baseline` (taken before the configuration was loaded) are what
/// the running Gantry was started with.
pub async fn started_from(gantry: &Gantry, baseline: &Baseline) {
    *gantry.file_inputs().lock().await = Some(baseline.fingerprint);
}

/// What the watched files contain, as one hash; a missing file is a state of its own.
fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut hasher = DefaultHasher::new();
    for file in files {
        file.hash(&mut hasher);
        std::fs::read(file).ok().hash(&mut hasher);
    }
    hasher.finish()
}

/// The watched files and their fingerprint at one moment.
pub struct Baseline {
    files: Vec<PathBuf>,
    fingerprint: u64,
}

impl Baseline {
    /// Takes the baseline of `config` and the files it names. Take it *before* loading the
    /// config, so a change made between loading and watching is still seen.
    pub fn before_loading(config: &Path) -> Baseline {
        let mut files = vec![config.to_owned()];
        files.extend(lb_config::files_named_by(config));
        files.sort();
        files.dedup();
        Baseline {
            fingerprint: fingerprint(&files),
            files,
        }
    }
}

/// The config file, the files the running model depends on, and those the file names now.
fn watched_files(gantry: &Gantry, config: &Path) -> Vec<PathBuf> {
    let mut files = vec![config.to_owned()];
    files.extend(gantry.model().referenced_files());
    files.extend(lb_config::files_named_by(config));
    files.sort();
    files.dedup();
    files
}

/// Polls until `stop` is cancelled, reloading `config` whenever a watched file differs from
/// what it was (starting from `baseline`).
pub async fn watch_files(
    gantry: Gantry,
    config: PathBuf,
    baseline: Baseline,
    stop: CancellationToken,
) {
    let Baseline {
        mut files,
        fingerprint: mut last,
    } = baseline;
    loop {
        let interval = gantry.model().runtime.watch_interval;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        let current = fingerprint(&files);
        if current == last {
            continue;
        }
        tracing::info!(file = %config.display(), "configuration files changed; reloading");
        let _ = reload_from_file(&gantry, &config).await;
        // The fingerprint taken before the reload read the files is the baseline, so an edit
        // made during the reload is seen next time. Only a changed file set is re-read.
        let now_watched = watched_files(&gantry, &config);
        last = if now_watched == files {
            current
        } else {
            fingerprint(&now_watched)
        };
        files = now_watched;
    }
}
