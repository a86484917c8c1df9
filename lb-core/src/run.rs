//! The process around a running [`Gantry`]: SIGHUP reloads the config file, the file watcher
//! reloads on change, SIGUSR2 hands over to a new process ([`crate::handover`]), and SIGTERM
//! or SIGINT (or a completed handover) drains (no new connections, in-flight work gets
//! `runtime.shutdown_grace`) before returning, so the process exits 0.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

use crate::app::Gantry;
use crate::handover::{hand_over, HandoverError};
use crate::reload::{reload_from_file, watch_files, Baseline};

/// A handover under way: how to abandon it, and its outcome.
type Handover = (
    CancellationToken,
    Pin<Box<dyn Future<Output = Result<u32, HandoverError>> + Send>>,
);

/// Serves until SIGTERM or SIGINT, or until a new process took over after SIGUSR2, then
/// drains. With `config` (and the baseline taken before it was loaded), SIGHUP and file
/// changes reload it.
pub async fn serve_until_signalled(
    gantry: Gantry,
    config: Option<(PathBuf, Baseline)>,
) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut user2 = signal(SignalKind::user_defined2())?;
    let mut handover: Option<Handover> = None;
    // Ready only now that every signal has its handler: a signal sent as soon as the service
    // manager hears of it must not meet the default action (ending the process).
    crate::handover::announce_ready();
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
            _ = user2.recv() => {
                if handover.is_some() {
                    tracing::info!("SIGUSR2 ignored: a handover is already under way");
                } else if config.is_none() {
                    tracing::info!("SIGUSR2 ignored: no configuration file to hand over");
                } else {
                    tracing::info!("SIGUSR2: handing over to a new process");
                    let cancel = CancellationToken::new();
                    handover = Some((cancel.clone(), Box::pin(hand_over(cancel))));
                }
            }
            outcome = handed_over(&mut handover) => {
                handover = None;
                match outcome {
                    Ok(pid) => {
                        tracing::info!(pid, "the new process serves; this one drains and exits");
                        break;
                    }
                    Err(err) => {
                        tracing::error!(error = %err, "handover failed; this process keeps serving");
                    }
                }
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    if let Some((cancel, pending)) = handover.take() {
        cancel.cancel();
        if let Err(err) = pending.await {
            tracing::info!("handover abandoned: {err}");
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

/// The outcome of the handover under way; never, while there is none.
async fn handed_over(handover: &mut Option<Handover>) -> Result<u32, HandoverError> {
    match handover {
        Some((_, pending)) => pending.await,
        None => std::future::pending().await,
    }
}

fn humantime_secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
