//! The process around a running [`Gantry`]: SIGHUP reloads the config file, the file watcher
//! reloads on change, and SIGTERM or SIGINT drains (no new connections, in-flight work gets
//! `runtime.shutdown_grace`) before returning, so the process exits 0.

use std::path::PathBuf;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::app::Gantry;
use crate::reload::{reload_from_file, watch_files, Baseline};

/// Serves until SIGTERM or SIGINT, then drains. With `config` (and the baseline taken before
/// it was loaded), SIGHUP and file changes reload it.
pub async fn serve_until_signalled(
    gantry: Gantry,
    config: Option<(PathBuf, Baseline)>,
) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let stop_watching = CancellationToken::new();
    let (config, watcher) = match config {
        Some((path, baseline)) => {
            let watch = watch_files(
                gantry.clone(),
                path.clone(),
                baseline,
                stop_watching.clone(),
            );
            (Some(path), Some(tokio::spawn(watch)))
        }
        None => (None, None),
    };
    loop {
        tokio::select! {
            _ = hangup.recv() => match &config {
                Some(path) => {
                    tracing::info!("SIGHUP: reloading {}", path.display());
                    let _ = reload_from_file(&gantry, path).await;
                }
                None => tracing::info!("SIGHUP ignored: no configuration file to reload"),
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    stop_watching.cancel();
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    let grace = gantry.model().runtime.shutdown_grace;
    tracing::info!(grace = %humantime_secs(grace), "shutting down: draining connections");
    gantry.shutdown(grace).await;
    tracing::info!("stopped");
    Ok(())
}

fn humantime_secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
