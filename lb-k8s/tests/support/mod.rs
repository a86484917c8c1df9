//! What the controller tests share: a test API server with a kubeconfig for it, and
//! controllers run against it, each with a data plane that only records what it is asked to
//! serve and telemetry that records who writes.

#![allow(dead_code)] // each test crate uses its part

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_config::file::{FileConfig, ServiceFile};
use lb_config::model::Service;
use lb_config::{Admission, Admitted, FieldPath, ModelBuilder, Problems};
use lb_k8s::plane::{DataPlane, Update};
use lb_k8s::telemetry::{Leadership, Telemetry};
use lb_k8s_testing::{Kind, Options, TestApiServer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Long enough for any step of these tests on a busy machine; never reached when they pass.
pub(crate) const WAIT: Duration = Duration::from_secs(30);

/// Serves nothing; admits what it is given exactly as the appliance does (the same
/// [`Admitted`], kept from one update to the next) and remembers the services admitted.
pub(crate) struct Recorder {
    builder: ModelBuilder,
    admitted: Mutex<Option<Admitted>>,
    pub(crate) served: Mutex<BTreeMap<String, Arc<Service>>>,
}

#[async_trait::async_trait]
impl DataPlane for Recorder {
    fn check(&self, origin: &FieldPath, spec: ServiceFile) -> Result<Service, Problems> {
        self.builder.check_service(origin, spec)
    }

    async fn publish(&self, update: Update) -> Result<Vec<Admission>, String> {
        let mut admitted = self.admitted.lock().expect("lock");
        let admitted = match admitted.as_mut() {
            Some(admitted) if !update.replace => admitted,
            _ => admitted.insert(self.builder.admitted()),
        };
        update.withdraw(admitted);
        let outcomes = update.offered.iter().map(|c| c.offer(admitted)).collect();
        *self.served.lock().expect("lock") = admitted
            .iter()
            .flat_map(|(_, services)| services)
            .map(|service| (service.name.clone(), Arc::clone(service)))
            .collect();
        Ok(outcomes)
    }
}

/// Who writes, as a controller sees it, and the writes it made.
#[derive(Default)]
pub(crate) struct Log {
    pub(crate) leadership: Mutex<Option<Leadership>>,
    /// `(what, outcome)` of every write.
    pub(crate) writes: Mutex<Vec<(String, String)>>,
}

impl Telemetry for Log {
    fn api_write(&self, what: &str, outcome: &str) {
        self.writes
            .lock()
            .expect("lock")
            .push((what.to_owned(), outcome.to_owned()));
    }

    fn leadership(&self, leadership: &Leadership) {
        *self.leadership.lock().expect("lock") = Some(leadership.clone());
    }
}

/// A test API server and the directory of its kubeconfig (`kubeconfig`).
pub(crate) struct Cluster {
    pub(crate) server: TestApiServer,
    pub(crate) dir: tempfile::TempDir,
}

impl Cluster {
    pub(crate) async fn start() -> Cluster {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let server = TestApiServer::start(Options::default())
            .await
            .expect("server");
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig()).expect("kubeconfig");
        Cluster { server, dir }
    }

    /// Runs a controller configured by `yaml` (a file with a `kubernetes:` section whose
    /// kubeconfig is `kubeconfig`).
    pub(crate) fn launch(&self, yaml: &str) -> Controller {
        let file: FileConfig = serde_yaml::from_str(yaml).expect("yaml");
        let builder = ModelBuilder::from_file(file, self.dir.path());
        assert!(builder.problems().is_empty(), "{}", builder.problems());
        let section = builder.kubernetes().cloned().expect("section");
        let plane = Arc::new(Recorder {
            builder,
            admitted: Mutex::new(None),
            served: Mutex::new(BTreeMap::new()),
        });
        let log = Arc::new(Log::default());
        let stop = CancellationToken::new();
        let task = {
            let plane: Arc<dyn DataPlane> = plane.clone();
            let log: Arc<dyn Telemetry> = log.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                lb_k8s::controller::run(&section, plane, log, stop)
                    .await
                    .expect("runs");
            })
        };
        Controller {
            plane,
            log,
            stop,
            task,
        }
    }

    /// The Service `default/name`.
    pub(crate) fn service(&self, name: &str) -> Option<Value> {
        self.server
            .get(&(Kind::Service, "default".into(), name.into()))
    }

    /// The address the status of `default/name` shows.
    pub(crate) fn address(&self, name: &str) -> Option<String> {
        self.service(name)?["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_owned)
    }

    /// The Events with `reason`.
    pub(crate) fn events(&self, reason: &str) -> usize {
        self.server
            .list(Kind::Event)
            .iter()
            .filter(|e| e["reason"] == reason)
            .count()
    }

    /// Waits until `check` has a value; on timeout, fails with what the cluster holds.
    pub(crate) async fn until<T>(&self, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(value) = check() {
                return value;
            }
            if tokio::time::Instant::now() >= deadline {
                let services = self.server.list(Kind::Service);
                let seen: Vec<String> = self
                    .server
                    .seen()
                    .iter()
                    .map(|s| format!("{} {}?{} {}", s.method, s.path, s.query, s.status))
                    .collect();
                panic!(
                    "timed out waiting for {what}\nservices: {services:#?}\nrequests: {seen:#?}"
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One running controller.
pub(crate) struct Controller {
    pub(crate) plane: Arc<Recorder>,
    pub(crate) log: Arc<Log>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Controller {
    /// Where it serves the service `name` of the model (`default/web`), if it does.
    pub(crate) fn bind(&self, name: &str, port: &str) -> Option<String> {
        let served = self.plane.served.lock().expect("lock");
        Some(served.get(name)?.ports.get(port)?.bind.to_string())
    }

    /// Whether it holds the Lease, as it last said.
    pub(crate) fn leading(&self) -> Option<bool> {
        let leadership = self.log.leadership.lock().expect("lock");
        leadership.as_ref().map(|l| l.leading)
    }

    /// Its identity as a candidate for the Lease, once it has said it.
    pub(crate) fn identity(&self) -> Option<String> {
        let leadership = self.log.leadership.lock().expect("lock");
        leadership.as_ref().map(|l| l.identity.clone())
    }

    /// The writes it made, or tried to.
    pub(crate) fn writes(&self) -> Vec<(String, String)> {
        self.log.writes.lock().expect("lock").clone()
    }

    /// Stops it and waits until it has stopped (the Lease handed back).
    pub(crate) async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("controller task");
    }
}

/// A LoadBalancer Service of Gantry's class: port 80 (`web`), and an SCTP port Gantry does
/// not serve.
pub(crate) fn lb(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "LoadBalancer", "loadBalancerClass": "gantry.io/lb", "ports": [{"name": "web", "port": 80}, {"name": "signal", "port": 2905, "protocol": "SCTP"}]}})
}

/// The EndpointSlice of `service`: one ready endpoint, `ip`, port 8080 (`web`).
pub(crate) fn slice(service: &str, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": format!("{service}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
           "ports": [{"name": "web", "port": 8080}], "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]})
}
