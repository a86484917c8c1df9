//! The in-cluster manifests (`deploy/`), checked against the Kubernetes API types: every
//! object reads as its kind's type with no field left over (a misspelled or misplaced field
//! would be dropped by the API server without a word), the ConfigMap's `gantry.yaml` passes
//! Gantry's own validation, and the Deployment's probes and account match what the
//! configuration and the RBAC manifest provide.

use std::path::PathBuf;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

/// Every object in `deploy/NAME`, as JSON.
fn objects(name: &str) -> Vec<Value> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let yaml = serde_yaml::Value::deserialize(document)
                .unwrap_or_else(|e| panic!("{name} is YAML: {e}"));
            serde_json::to_value(yaml).unwrap_or_else(|e| panic!("{name} as JSON: {e}"))
        })
        .collect()
}

/// Where `written` has a field or value that `typed` (the same object read as its type and
/// written back) lost or changed, as a path.
fn lost(written: &Value, typed: &Value, path: &str) -> Option<String> {
    match (written, typed) {
        (Value::Object(w), Value::Object(t)) => {
            w.iter().find_map(|(key, value)| match t.get(key) {
                Some(kept) => lost(value, kept, &format!("{path}.{key}")),
                None => Some(format!("{path}.{key}")),
            })
        }
        (Value::Array(w), Value::Array(t)) if w.len() == t.len() => w
            .iter()
            .zip(t)
            .enumerate()
            .find_map(|(i, (w, t))| lost(w, t, &format!("{path}[{i}]"))),
        (w, t) if w == t => None,
        // Quantities and ports may be written as numbers or strings.
        (Value::Number(n), Value::String(s)) | (Value::String(s), Value::Number(n))
            if n.to_string() == *s =>
        {
            None
        }
        _ => Some(format!("{path}: {written} became {typed}")),
    }
}

/// `object` read as `T`; fails on any field the type does not have.
fn typed<T: DeserializeOwned + serde::Serialize>(object: &Value) -> T {
    let name = &object["metadata"]["name"];
    let value: T = serde_json::from_value(object.clone())
        .unwrap_or_else(|e| panic!("{} {name}: {e}", object["kind"]));
    let back = serde_json::to_value(&value).expect("serializes");
    if let Some(path) = lost(object, &back, "") {
        panic!("{} {name}: {path} is not part of the type", object["kind"]);
    }
    value
}

#[test]
fn the_manifests_are_valid_kubernetes_objects_for_a_valid_configuration() {
    let mut deployment = None;
    let mut config_map = None;
    let mut bound_account = None;
    let mut lease_role = None;
    let mut lease_binding = None;
    let mut kinds = Vec::new();
    for object in objects("rbac.yaml").iter().chain(&objects("gantry.yaml")) {
        let kind = object["kind"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "Namespace" => drop(typed::<Namespace>(object)),
            "ServiceAccount" => drop(typed::<ServiceAccount>(object)),
            "ClusterRole" => drop(typed::<ClusterRole>(object)),
            "ClusterRoleBinding" => {
                let binding = typed::<ClusterRoleBinding>(object);
                let subject = binding.subjects.unwrap_or_default().pop().expect("subject");
                bound_account = Some((subject.namespace, subject.name));
            }
            "Role" => lease_role = Some(typed::<Role>(object)),
            "RoleBinding" => lease_binding = Some(typed::<RoleBinding>(object)),
            "ConfigMap" => config_map = Some(typed::<ConfigMap>(object)),
            "Deployment" => deployment = Some(typed::<Deployment>(object)),
            other => panic!("unexpected kind {other:?}"),
        }
        kinds.push(kind);
    }
    assert_eq!(
        kinds,
        [
            "Namespace",
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "ConfigMap",
            "Deployment"
        ]
    );

    let config_map = config_map.expect("ConfigMap");
    let text = config_map
        .data
        .as_ref()
        .and_then(|d| d.get("gantry.yaml"))
        .expect("gantry.yaml in the ConfigMap");
    let model = lb_config::parse_str(text, std::path::Path::new("/etc/gantry"))
        .unwrap_or_else(|e| panic!("the ConfigMap's configuration: {e}"));
    let section = model.kubernetes.expect("it serves the cluster");

    // The Role lets the account hold the Lease the configuration elects with, where it is.
    let election = section.leader_election.expect("replicas elect a writer");
    let role = lease_role.expect("the leader-election Role");
    assert_eq!(
        role.metadata.namespace.as_deref(),
        Some(election.lease_namespace.as_str())
    );
    let granted = |verb: &str| {
        role.rules.iter().flatten().any(|rule| {
            rule.api_groups
                .iter()
                .flatten()
                .any(|g| g == "coordination.k8s.io")
                && rule.resources.iter().flatten().any(|r| r == "leases")
                && rule.verbs.iter().any(|v| v == verb)
                && rule
                    .resource_names
                    .as_ref()
                    .is_none_or(|names| names.contains(&election.lease_name))
        })
    };
    for verb in ["get", "create", "update"] {
        assert!(granted(verb), "the Role lacks `{verb}` on the Lease");
    }
    let binding = lease_binding.expect("the leader-election RoleBinding");
    assert_eq!(
        binding.role_ref.name,
        role.metadata.name.clone().expect("name")
    );
    let subject = binding.subjects.unwrap_or_default().pop().expect("subject");
    assert_eq!(
        (subject.namespace, subject.name),
        bound_account
            .clone()
            .expect("the ClusterRoleBinding's account")
    );

    let deployment = deployment.expect("Deployment");
    let pod = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod spec");
    assert_eq!(pod.host_network, Some(true));
    assert_eq!(
        bound_account,
        Some((
            deployment.metadata.namespace.clone(),
            pod.service_account_name.clone().expect("account")
        )),
        "the pod runs as the account deploy/rbac.yaml binds"
    );
    let container = &pod.containers[0];
    for (probe, path) in [
        (&container.liveness_probe, "/healthz"),
        (&container.readiness_probe, "/readyz"),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an HTTP probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(
            serde_json::to_value(&get.port).expect("port"),
            Value::from(model.admin.listen.port()),
            "probes reach the admin listener"
        );
    }
    assert!(
        container
            .resources
            .as_ref()
            .and_then(|r| r.requests.as_ref())
            .is_some(),
        "resource requests"
    );
}
