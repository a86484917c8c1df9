//! Leader election against the test API server, through kube-rs as Gantry runs it: two
//! candidates for one Lease, one of which holds it; a graceful stop hands it over at once;
//! a holder that stops renewing stops writing before the other may take over.

mod support;

use std::time::Duration;

use kube::Client;
use lb_config::LeaderElection;
use lb_k8s::client::{connect, Credentials};
use lb_k8s::controller::lease::{self, Fence, Lead};
use lb_k8s_testing::{Kind, TestApiServer};
use support::{Cluster, WAIT};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Short timings (the smallest the configuration accepts), so a takeover is quick.
fn timing() -> LeaderElection {
    LeaderElection {
        lease_name: "gantry".to_owned(),
        lease_namespace: "default".to_owned(),
        lease_duration: Duration::from_secs(1),
        renew_deadline: Duration::from_millis(800),
        retry_period: Duration::from_millis(200),
    }
}

/// The test API server and the folder of its kubeconfig.
async fn server() -> (TestApiServer, tempfile::TempDir) {
    let Cluster { server, dir } = Cluster::start().await;
    (server, dir)
}

async fn client(dir: &tempfile::TempDir) -> Client {
    connect(&Credentials::Kubeconfig {
        path: dir.path().join("kubeconfig"),
        context: None,
    })
    .await
    .expect("client")
}

/// One candidate.
struct Candidate {
    identity: String,
    fence: Fence,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

async fn candidate(dir: &tempfile::TempDir, instance: &str) -> Candidate {
    let identity = lease::identity(instance);
    let stop = CancellationToken::new();
    let (fence, task) = lease::spawn(
        client(dir).await,
        &timing(),
        identity.clone(),
        std::sync::Arc::new(lb_k8s::telemetry::NoTelemetry),
        stop.clone(),
    );
    Candidate {
        identity,
        fence,
        stop,
        task,
    }
}

impl Candidate {
    /// Waits until the lead satisfies `wanted`, and says when that was seen.
    async fn until(&mut self, wanted: impl Fn(&Lead) -> bool) -> Instant {
        tokio::time::timeout(WAIT, async {
            while !wanted(&self.fence.lead()) {
                self.fence.changed().await;
            }
            Instant::now()
        })
        .await
        .unwrap_or_else(|_| panic!("{}: still {:?}", self.identity, self.fence.lead()))
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("the elector ends");
    }
}

/// A second candidate, once it has read the Lease and named `holder` as its holder.
async fn follower_of(holder: &Candidate, dir: &tempfile::TempDir) -> Candidate {
    let mut follower = candidate(dir, "b").await;
    let named = Some(holder.identity.clone());
    follower
        .until(|lead| {
            *lead
                == Lead::Following {
                    holder: named.clone(),
                }
        })
        .await;
    follower
}

fn leading(lead: &Lead) -> bool {
    matches!(lead, Lead::Leading { .. })
}

fn lease_spec(server: &TestApiServer) -> serde_json::Value {
    let lease = server
        .get(&(Kind::Lease, "default".to_owned(), "gantry".to_owned()))
        .expect("the Lease exists");
    lease["spec"].clone()
}

#[tokio::test]
async fn one_candidate_holds_the_lease_and_hands_it_over_when_it_stops() {
    let (server, dir) = server().await;
    let mut a = candidate(&dir, "a").await;
    a.until(leading).await;
    assert_eq!(lease_spec(&server)["holderIdentity"], a.identity.as_str());
    assert_eq!(lease_spec(&server)["leaseDurationSeconds"], 1);

    // The second candidate reads the Lease, names its holder, and does not take it.
    let mut b = follower_of(&a, &dir).await;
    assert!(a.fence.leading_now());
    assert!(!b.fence.leading_now());
    assert_eq!(lease_spec(&server)["holderIdentity"], a.identity.as_str());

    // A graceful stop hands the Lease back as client-go does, and the other takes it at its
    // next try (well within the lease duration it would otherwise wait out).
    a.stop().await;
    let released = lease_spec(&server);
    assert_eq!(released["holderIdentity"], "");
    assert_eq!(released["leaseDurationSeconds"], 1);
    b.until(leading).await;
    let taken = lease_spec(&server);
    assert_eq!(taken["holderIdentity"], b.identity.as_str());
    assert_eq!(taken["leaseTransitions"], 1);
    assert_eq!(taken["leaseDurationSeconds"], 1);
    b.stop().await;
}

#[tokio::test]
async fn a_holder_that_stops_renewing_stops_writing_before_another_may_take_over() {
    let (server, dir) = server().await;
    let mut a = candidate(&dir, "a").await;
    a.until(leading).await;
    let mut b = follower_of(&a, &dir).await;

    // The holder's elector dies (a hung or crashed process): nothing renews, nothing hands
    // the Lease back.
    let Lead::Leading { until } = a.fence.lead() else {
        panic!("a leads");
    };
    a.task.abort();
    // A write in flight when the right to write ends is abandoned then, and none starts after.
    let in_flight = a.fence.guard(std::future::pending::<()>()).await;
    assert_eq!(in_flight, Err(lease::Fenced));
    assert!(Instant::now() >= until);
    assert!(!a.fence.leading_now());
    assert_eq!(a.fence.guard(async {}).await, Err(lease::Fenced));

    // The other candidate takes the Lease once it has expired by its own clock: after the
    // first could no longer write.
    let took = b.until(leading).await;
    assert!(
        took > until,
        "b took the Lease before a's right to write ended"
    );
    let spec = lease_spec(&server);
    assert_eq!(spec["holderIdentity"], b.identity.as_str());
    assert_eq!(spec["leaseTransitions"], 1);
    b.stop().await;
}
