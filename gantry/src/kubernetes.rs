//! The Kubernetes source inside the appliance: runs `lb-k8s`'s controller while the model has
//! a `kubernetes:` section, restarts it when the section changes, and drops its services when
//! the section goes. The controller reaches the appliance through the [`DataPlane`] it is
//! given (the same checks as the file's services, and publishing the set: the appliance's
//! `Gantry` implements it), so this module knows nothing of the appliance.

use std::sync::Arc;
use std::time::Duration;

use lb_config::Kubernetes;
use lb_k8s::plane::{DataPlane, Update};
use lb_k8s::telemetry::Telemetry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait before connecting again after the cluster could not be reached at all.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(60);

/// Runs the source for each section `sections` carries until `stop`, serving `plane` and
/// reporting to `telemetry`.
pub(crate) fn supervise(
    plane: Arc<dyn DataPlane>,
    telemetry: Arc<dyn Telemetry>,
    mut sections: watch::Receiver<Option<Kubernetes>>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let section = sections.borrow_and_update().clone();
            let running = stop.child_token();
            let task = section.clone().map(|section| {
                let source = run(plane.clone(), telemetry.clone(), section, running.clone());
                tokio::spawn(source)
            });
            let stopping = tokio::select! {
                changed = sections.changed() => changed.is_err(),
                () = stop.cancelled() => true,
            };
            running.cancel();
            if let Some(task) = task {
                let _ = task.await;
            }
            if stopping {
                return;
            }
            if section.is_some() && sections.borrow().is_none() {
                tracing::info!("the kubernetes section is gone: its services stop");
                if let Err(error) = plane
                    .publish(Update {
                        replace: true,
                        ..Update::default()
                    })
                    .await
                {
                    tracing::error!(%error, "could not remove the Kubernetes services");
                }
            }
        }
    })
}

/// Runs the controller for `section`, connecting again (backing off) while the cluster
/// cannot be reached.
async fn run(
    plane: Arc<dyn DataPlane>,
    telemetry: Arc<dyn Telemetry>,
    section: Kubernetes,
    stop: CancellationToken,
) {
    let mut backoff = Duration::from_secs(1);
    loop {
        match lb_k8s::controller::run(&section, plane.clone(), telemetry.clone(), stop.clone())
            .await
        {
            Ok(()) => return,
            Err(error) => tracing::error!(%error, retry_in = ?backoff, "cannot reach the cluster"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = stop.cancelled() => return,
        }
        backoff = (backoff * 2).min(MAX_CONNECT_BACKOFF);
    }
}
