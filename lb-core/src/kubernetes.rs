//! The Kubernetes source inside the appliance: runs `lb-k8s`'s controller while the model has
//! a `kubernetes:` section, restarts it when the section changes, and drops its services when
//! the section goes. The controller reaches the data plane through [`Plane`]: the same checks
//! as the file's services, and [`Gantry::publish_kubernetes`].

use std::sync::Arc;
use std::time::Duration;

use lb_config::file::ServiceFile;
use lb_config::model::Service;
use lb_config::{Admission, FieldPath, Kubernetes, Problems};
use lb_k8s::plane::{DataPlane, Update};
use lb_k8s::telemetry::Telemetry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::Gantry;

/// Longest wait before connecting again after the cluster could not be reached at all.
const MAX_CONNECT_BACKOFF: Duration = Duration::from_secs(60);

/// The data plane as the controller sees it.
struct Plane(Gantry);

#[async_trait::async_trait]
impl DataPlane for Plane {
    fn check(&self, origin: &FieldPath, spec: ServiceFile) -> Result<Service, Problems> {
        self.0.check_kubernetes(origin, spec)
    }

    async fn publish(&self, update: Update) -> Result<Vec<Admission>, String> {
        self.0.publish_kubernetes(update).await
    }
}

/// Runs the source for each section `sections` carries until `stop`.
pub(crate) fn supervise(
    gantry: Gantry,
    mut sections: watch::Receiver<Option<Kubernetes>>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let section = sections.borrow_and_update().clone();
            let running = stop.child_token();
            let task = section
                .clone()
                .map(|section| tokio::spawn(run(gantry.clone(), section, running.clone())));
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
                if let Err(error) = gantry
                    .publish_kubernetes(Update {
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
async fn run(gantry: Gantry, section: Kubernetes, stop: CancellationToken) {
    let plane: Arc<dyn DataPlane> = Arc::new(Plane(gantry.clone()));
    let telemetry: Arc<dyn Telemetry> = gantry.metrics_handle();
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
