//! The process around a running [`Gantry`]: it holds the control socket (so a second Gantry
//! refuses to start beside it, and one asked to can take over: [`crate::takeover`]), SIGHUP
//! reloads the config file, the file watcher reloads on change, SIGUSR2 starts a new process
//! that takes over ([`crate::handover`]), and SIGTERM or SIGINT (or a completed takeover)
//! drains (no new connections, in-flight work gets `runtime.shutdown_grace`) before returning,
//! so the process exits 0.

use std::path::PathBuf;
use std::sync::Arc;

use lb_config::ModelBuilder;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::app::{FileApplyError, Gantry};
use crate::handover::{HandoverError, Successor};
use crate::reload::{reload_from_file, watch_files, Baseline};
use crate::takeover::predecessor::{ControlServer, TakeoverEvent};
use crate::takeover::successor::Predecessor;
use crate::takeover::TakeoverError;

/// How `gantry run` starts.
pub struct RunOptions {
    /// The control socket's abstract name.
    pub control_socket: String,
    /// Take over from the Gantry holding the control socket, if one does.
    pub takeover: bool,
}

/// Why Gantry did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another Gantry serves, or the takeover failed before this process served.
    #[error(transparent)]
    Takeover(#[from] TakeoverError),
    /// The configuration could not be served.
    #[error(transparent)]
    Apply(#[from] FileApplyError),
    /// Signals could not be handled.
    #[error("signal handling failed: {0}")]
    Signals(std::io::Error),
}

/// The control socket, once the predecessor that said it is done has let it go. It gives the
/// socket up before saying so, but the socket closes when its accept loop, another task, next
/// runs: until then (a few milliseconds, longer on a starved machine) the name is still held.
/// Seen in the appliance's upgrade test: the successor served without a control socket, and
/// the next upgrade found nothing to take over from.
async fn take_control_socket(name: &str, described: &str) -> Result<ControlServer, StartError> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match ControlServer::bind_exclusive(name, described).await {
            Ok(control) => return Ok(control),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(err) => return Err(err.into()),
        }
    }
}

/// Serves the configuration file `config` (checked into `builder`, `baseline` taken before it
/// was read) until signalled: holding the control socket, and first taking over from the Gantry
/// that holds it when `options.takeover` says so (or this process was started by SIGUSR2).
pub async fn serve_file(
    builder: ModelBuilder,
    config: PathBuf,
    baseline: Baseline,
    options: RunOptions,
) -> Result<(), StartError> {
    let name = options.control_socket.as_str();
    let described = config.display().to_string();
    // Announced routes must not outlive this process: a guard (this program) withdraws them
    // if it dies.
    match std::env::current_exe() {
        Ok(program) => crate::routing::guard::enable(program),
        Err(err) => tracing::warn!(%err, "cannot find this program: no routing guard"),
    }
    let takeover = options.takeover || crate::handover::started_to_take_over();
    let predecessor = match takeover {
        true => Predecessor::find(name).await?,
        false => None,
    };
    let (gantry, control) = match predecessor {
        Some(predecessor) => {
            tracing::info!(pid = predecessor.pid, config = %predecessor.config, "taking over from the running gantry");
            let inherited = predecessor.take_sockets().await?;
            let gantry = Gantry::start_file_inheriting(builder, inherited).await?;
            match predecessor.finish(&gantry).await {
                Ok(flows) => tracing::info!(udp_flows = flows, "took over"),
                Err(err) => {
                    tracing::error!(error = %err, "the takeover ended early; serving what this process has")
                }
            }
            let control = match take_control_socket(name, &described).await {
                Ok(control) => Some(control),
                Err(err) => {
                    tracing::error!(error = %err, "serving without a control socket: this process cannot be taken over");
                    None
                }
            };
            (gantry, control)
        }
        None => {
            if takeover {
                tracing::info!(control_socket = %name, "no gantry to take over from; starting afresh");
            }
            let control = ControlServer::bind_exclusive(name, &described).await?;
            (Gantry::start_file(builder).await?, Some(control))
        }
    };
    crate::reload::started_from(&gantry, &baseline).await;
    serve_until_signalled(gantry, Some((config, baseline)), control.map(Arc::new))
        .await
        .map_err(StartError::Signals)
}

/// Serves until SIGTERM or SIGINT, or until a new process took over (after SIGUSR2, or on its
/// own through `control`), then drains. With `config` (and the baseline taken before it was
/// loaded), SIGHUP and file changes reload it, and SIGUSR2 starts a process that takes over.
pub async fn serve_until_signalled(
    gantry: Gantry,
    config: Option<(PathBuf, Baseline)>,
    control: Option<Arc<ControlServer>>,
) -> std::io::Result<()> {
    let mut hangup = signal(SignalKind::hangup())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut user2 = signal(SignalKind::user_defined2())?;
    let mut successor: Option<Successor> = None;
    let mut takeovers = match &control {
        Some(control) => control.clone().serve(gantry.clone()),
        None => mpsc::unbounded_channel().1,
    };
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
    let mut taken_over = false;
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
                if successor.is_some() {
                    tracing::info!("SIGUSR2 ignored: a handover is already under way");
                } else if config.is_none() || control.is_none() {
                    tracing::info!("SIGUSR2 ignored: no configuration file or control socket to hand over with");
                } else {
                    tracing::info!("SIGUSR2: starting a new process to take over");
                    match Successor::spawn() {
                        Ok(started) => successor = Some(started),
                        Err(err) => tracing::error!(error = %err, "handover failed; this process keeps serving"),
                    }
                }
            }
            error = failed(&mut successor) => {
                tracing::error!(error = %error, "handover failed; this process keeps serving");
                if let Some(child) = successor.take() {
                    child.stop().await;
                }
            }
            Some(event) = takeovers.recv() => match event {
                TakeoverEvent::TakenOver { pid } => {
                    if let Some(child) = successor.take() {
                        if child.pid() == pid {
                            child.took_over();
                        } else {
                            child.stop().await;
                        }
                    }
                    tracing::info!(pid, "the new process serves; this one drains and exits");
                    taken_over = true;
                    break;
                }
                TakeoverEvent::Failed { pid, error } => {
                    tracing::error!(pid, error = %error, "takeover failed; this process keeps serving");
                }
            },
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    if let Some(child) = successor.take() {
        tracing::info!("handover abandoned: this process is stopping");
        child.stop().await;
    }
    stop_watching.cancel();
    if let Some(watcher) = watcher {
        let _ = watcher.await;
    }
    if taken_over {
        // The new process serves the admin endpoint on the same socket, and announces the
        // same routes.
        gantry.stop_admin_now().await;
    } else {
        // Routers stop sending here before the listeners close.
        gantry.withdraw_routes().await;
    }
    let grace = gantry.model().runtime.shutdown_grace;
    tracing::info!(grace = %humantime_secs(grace), "shutting down: draining connections");
    gantry.shutdown(grace).await;
    tracing::info!("stopped");
    Ok(())
}

/// Why the handover under way failed; never, while there is none or it goes on.
async fn failed(successor: &mut Option<Successor>) -> HandoverError {
    match successor {
        Some(child) => child.failed().await,
        None => std::future::pending().await,
    }
}

fn humantime_secs(d: std::time::Duration) -> String {
    format!("{}s", d.as_secs_f64())
}
