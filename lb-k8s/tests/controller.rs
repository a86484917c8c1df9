//! The controller against the test API server, with a data plane that only records what it
//! is asked to serve: addresses, finalizers, status and Events as the cluster sees them.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_config::file::{FileConfig, ServiceFile};
use lb_config::model::Service;
use lb_config::{FieldPath, ModelBuilder, Problems};
use lb_k8s::plane::{Candidate, DataPlane, Served};
use lb_k8s::telemetry::NoTelemetry;
use lb_k8s::testing::{Kind, Options, TestApiServer};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// Serves nothing; remembers the services it was given.
struct Recorder {
    builder: ModelBuilder,
    served: Mutex<BTreeMap<String, std::sync::Arc<Service>>>,
}

#[async_trait::async_trait]
impl DataPlane for Recorder {
    fn check(&self, origin: &FieldPath, spec: ServiceFile) -> Result<Service, Problems> {
        self.builder.check_service(origin, spec)
    }

    async fn publish(&self, candidates: Vec<Candidate>) -> Result<Vec<Served>, String> {
        let mut builder = self.builder.clone();
        let offered: Vec<_> = candidates.iter().map(|c| c.alternatives.clone()).collect();
        let outcomes = builder.admit(
            candidates
                .into_iter()
                .map(|c| (c.origin, c.alternatives))
                .collect(),
        );
        let mut served = BTreeMap::new();
        let outcomes = outcomes
            .into_iter()
            .zip(offered)
            .map(|(outcome, alternatives)| match outcome {
                Ok(i) => {
                    for service in &alternatives[i] {
                        served.insert(service.name.clone(), service.clone());
                    }
                    Served::Alternative(i, Problems::default())
                }
                Err(problems) => Served::Refused(problems),
            })
            .collect();
        *self.served.lock().expect("lock") = served;
        Ok(outcomes)
    }
}

struct Running {
    server: TestApiServer,
    plane: Arc<Recorder>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    _dir: tempfile::TempDir,
}

async fn start() -> Running {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let server = TestApiServer::start(Options::default())
        .await
        .expect("server");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("kubeconfig"), server.kubeconfig()).expect("kubeconfig");
    let yaml = "kubernetes:\n  kubeconfig: kubeconfig\n  instance: test\n  address_pools:\n    - { name: main, addresses: [192.0.2.10-192.0.2.11] }\n";
    let file: FileConfig = serde_yaml::from_str(yaml).expect("yaml");
    let builder = ModelBuilder::from_file(file, dir.path());
    assert!(builder.problems().is_empty(), "{}", builder.problems());
    let section = builder.kubernetes().cloned().expect("section");
    let plane = Arc::new(Recorder {
        builder,
        served: Mutex::new(BTreeMap::new()),
    });
    let stop = CancellationToken::new();
    let task = {
        let plane: Arc<dyn DataPlane> = plane.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            lb_k8s::controller::run(&section, plane, Arc::new(NoTelemetry), stop)
                .await
                .expect("runs");
        })
    };
    Running {
        server,
        plane,
        stop,
        task,
        _dir: dir,
    }
}

impl Running {
    async fn until<T>(&self, what: &str, mut check: impl FnMut(&Self) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(value) = check(self) {
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

    fn service(&self, name: &str) -> Option<Value> {
        self.server
            .get(&(Kind::Service, "default".into(), name.into()))
    }

    fn events(&self, reason: &str) -> usize {
        self.server
            .list(Kind::Event)
            .iter()
            .filter(|e| e["reason"] == reason)
            .count()
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.expect("controller task");
    }
}

fn lb(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
           "spec": {"type": "LoadBalancer", "loadBalancerClass": "gantry.io/lb", "ports": [{"name": "web", "port": 80}, {"name": "signal", "port": 2905, "protocol": "SCTP"}]}})
}

fn slice(service: &str, ip: &str) -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
           "metadata": {"name": format!("{service}-1"), "namespace": "default", "labels": {"kubernetes.io/service-name": service}},
           "ports": [{"name": "web", "port": 8080}], "endpoints": [{"addresses": [ip], "conditions": {"ready": true}}]})
}

#[tokio::test]
async fn a_load_balancer_is_provisioned_reported_and_cleaned_up() {
    let run = start().await;
    run.server.create(lb("web")).expect("service");
    run.server
        .create(slice("web", "198.51.100.7"))
        .expect("slice");
    let ingress = run
        .until("status", |r| {
            let s = r.service("web")?;
            let ingress = s["status"]["loadBalancer"]["ingress"][0].clone();
            ingress.is_object().then_some(ingress)
        })
        .await;
    assert_eq!(ingress["ip"], "192.0.2.10");
    assert_eq!(ingress["ipMode"], "Proxy");
    assert_eq!(
        ingress["ports"][1]["error"],
        "gantry.io/UnsupportedProtocol"
    );
    let service = run.service("web").expect("service");
    assert_eq!(
        service["metadata"]["finalizers"],
        json!(["service.kubernetes.io/load-balancer-cleanup"])
    );
    let served = run
        .until("served", |r| {
            r.plane
                .served
                .lock()
                .expect("lock")
                .get("default/web")
                .cloned()
        })
        .await;
    let port = served.ports.get("web").expect("port web");
    assert_eq!(port.bind.to_string(), "192.0.2.10:80");
    assert_eq!(
        port.backends
            .iter()
            .map(|b| b.address.to_string())
            .collect::<Vec<_>>(),
        vec!["198.51.100.7:8080"]
    );
    run.until("EnsuredLoadBalancer", |r| {
        (r.events("EnsuredLoadBalancer") == 1).then_some(())
    })
    .await;
    run.until("a Warning for the SCTP port", |r| {
        (r.events("UnsupportedPort") == 1).then_some(())
    })
    .await;

    // A second Service gets the next address; a third finds the pool exhausted.
    run.server.create(lb("two")).expect("two");
    run.until("two addressed", |r| {
        r.service("two")?["status"]["loadBalancer"]["ingress"][0]["ip"]
            .as_str()
            .map(str::to_owned)
    })
    .await;
    run.server.create(lb("three")).expect("three");
    let condition = run
        .until("exhausted", |r| {
            let s = r.service("three")?;
            let c = s["status"]["conditions"][0].clone();
            (c["reason"] == "AddressPoolExhausted").then_some(c)
        })
        .await;
    assert_eq!(condition["status"], "False");
    assert_eq!(
        run.service("two").expect("two")["status"]["loadBalancer"]["ingress"][0]["ip"],
        "192.0.2.11"
    );

    // Deleting: the finalizer holds the object until the listeners are gone and the address
    // is back in the pool; the waiting Service then gets it.
    run.server
        .delete(&(Kind::Service, "default".into(), "web".into()))
        .expect("delete");
    run.until("deleted", |r| r.service("web").is_none().then_some(()))
        .await;
    assert!(!run
        .plane
        .served
        .lock()
        .expect("lock")
        .contains_key("default/web"));
    let ip = run
        .until("three gets the freed address", |r| {
            let ip = r.service("three")?["status"]["loadBalancer"]["ingress"][0]["ip"].clone();
            ip.is_string().then_some(ip)
        })
        .await;
    assert_eq!(ip, "192.0.2.10");
    assert!(run.events("DeletedLoadBalancer") >= 1);
    run.stop().await;
}

#[tokio::test]
async fn a_restart_readopts_every_address() {
    let run = start().await;
    for name in ["a", "b"] {
        run.server.create(lb(name)).expect("service");
    }
    let before = run
        .until("both addressed", |r| {
            let ips: Vec<Value> = ["a", "b"]
                .iter()
                .map(|n| {
                    r.service(n)
                        .map(|s| s["status"]["loadBalancer"]["ingress"][0]["ip"].clone())
                        .unwrap_or(Value::Null)
                })
                .collect();
            ips.iter().all(Value::is_string).then_some(ips)
        })
        .await;
    let Running {
        server,
        stop,
        task,
        _dir,
        ..
    } = run;
    stop.cancel();
    task.await.expect("stopped");
    // "c" arrives while Gantry is away: after the restart it must not take a's or b's
    // address, though it comes first in no order but the pool's.
    let writes_before = server.seen().len();
    server.create(lb("c")).expect("c");
    let restarted = {
        let file: FileConfig = serde_yaml::from_str("kubernetes:\n  kubeconfig: kubeconfig\n  address_pools:\n    - { name: main, addresses: [192.0.2.10-192.0.2.12] }\n").expect("yaml");
        let builder = ModelBuilder::from_file(file, _dir.path());
        let section = builder.kubernetes().cloned().expect("section");
        let plane = Arc::new(Recorder {
            builder,
            served: Mutex::new(BTreeMap::new()),
        });
        let stop = CancellationToken::new();
        let dyn_plane: Arc<dyn DataPlane> = plane.clone();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move {
                lb_k8s::controller::run(&section, dyn_plane, Arc::new(NoTelemetry), stop)
                    .await
                    .expect("runs")
            }
        });
        Running {
            server,
            plane,
            stop,
            task,
            _dir,
        }
    };
    let c = restarted
        .until("c addressed", |r| {
            let ip = r.service("c")?["status"]["loadBalancer"]["ingress"][0]["ip"].clone();
            ip.is_string().then_some(ip)
        })
        .await;
    assert_eq!(c, "192.0.2.12");
    for (name, ip) in ["a", "b"].iter().zip(&before) {
        assert_eq!(
            &restarted.service(name).expect("kept")["status"]["loadBalancer"]["ingress"][0]["ip"],
            ip
        );
    }
    // No status of a or b was rewritten.
    let rewrites = restarted.server.seen()[writes_before..]
        .iter()
        .filter(|s| {
            s.method == http::Method::PATCH
                && (s.path.ends_with("/a/status") || s.path.ends_with("/b/status"))
        })
        .count();
    assert_eq!(rewrites, 0);
    // Taken over quietly: one EnsuredLoadBalancer each for a and b (before the restart), one for c.
    restarted
        .until("c announced", |r| {
            (r.events("EnsuredLoadBalancer") == 3).then_some(())
        })
        .await;
    restarted.stop().await;
}

#[tokio::test]
async fn a_secret_that_cannot_be_read_is_reported_not_waited_for() {
    let run = start().await;
    run.server.inject(lb_k8s::testing::Fault {
        method: http::Method::GET,
        path_contains: "/secrets".into(),
        status: 403,
        times: 1,
    });
    let mut service = lb("tls");
    service["metadata"]["annotations"] =
        json!({"gantry.io/protocol": "tls", "gantry.io/tls-secret": "missing"});
    run.server.create(service).expect("service");
    let note = |r: &Running, text: &str| {
        r.server.list(Kind::Event).iter().any(|e| {
            e["reason"] == "InvalidConfiguration"
                && e["note"].as_str().is_some_and(|n| n.contains(text))
        })
    };
    run.until("cannot be read", |r| {
        note(r, "Secret default/missing cannot be read").then_some(())
    })
    .await;
    // The watch recovers: the Secret is then known to be missing.
    run.until("not found", |r| {
        let condition = r.service("tls")?["status"]["conditions"][0].clone();
        condition["message"]
            .as_str()?
            .contains("Secret default/missing not found")
            .then_some(())
    })
    .await;
    run.stop().await;
}
