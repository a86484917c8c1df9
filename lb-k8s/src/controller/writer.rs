//! Gantry's writes to the API server: the cleanup finalizer (JSON patches that test the list
//! they change, so a concurrent change makes them fail rather than clobber it), the status
//! (a merge patch of the `status` subresource, conditional on the resourceVersion read, so
//! other writers' conditions are never lost), and Events (`events.k8s.io`, deduplicated into
//! series by kube's recorder).

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use lb_config::ObjectSource;
use serde_json::{json, Value};

use crate::index::ObjectKey;
use crate::telemetry::Telemetry;

/// The finalizer a load-balancer provider keeps on the Services it provisions.
pub const CLEANUP_FINALIZER: &str = "service.kubernetes.io/load-balancer-cleanup";

/// The controller name Events are reported under.
pub const CONTROLLER: &str = "gantry.io/load-balancer";

/// Writes to Services, and Events about them.
pub struct Writer {
    client: Client,
    recorder: Recorder,
    telemetry: Arc<dyn Telemetry>,
}

/// An Event about a Service.
pub struct Note {
    /// Warning or not.
    pub warning: bool,
    /// `EnsuringLoadBalancer`, `AddressInUse`, ...
    pub reason: &'static str,
    /// What happened, for people.
    pub message: String,
}

impl Writer {
    /// Writes through `client`, reporting Events as `instance`.
    pub fn new(client: Client, instance: &str, telemetry: Arc<dyn Telemetry>) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance: Some(instance.to_owned()),
        };
        Writer {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            telemetry,
        }
    }

    fn api(&self, key: &ObjectKey) -> Api<Service> {
        Api::namespaced(self.client.clone(), &key.namespace)
    }

    fn count<T>(&self, what: &str, result: &Result<T, kube::Error>) {
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.telemetry.api_write(what, outcome);
    }

    /// Adds the cleanup finalizer to `finalizers` (the Service's list as read); returns the
    /// Service as written.
    pub async fn add_finalizer(
        &self,
        key: &ObjectKey,
        finalizers: &[String],
    ) -> Result<Service, kube::Error> {
        let patch = if finalizers.is_empty() {
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [CLEANUP_FINALIZER]},
            ])
        } else {
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": finalizers},
                {"op": "add", "path": "/metadata/finalizers/-", "value": CLEANUP_FINALIZER},
            ])
        };
        let result = self.json_patch(key, patch).await;
        self.count("finalizer", &result);
        result
    }

    /// Removes the cleanup finalizer from `finalizers` (the list as read).
    pub async fn remove_finalizer(
        &self,
        key: &ObjectKey,
        finalizers: &[String],
    ) -> Result<(), kube::Error> {
        let Some(at) = finalizers.iter().position(|f| f == CLEANUP_FINALIZER) else {
            return Ok(());
        };
        let patch = json!([
            {"op": "test", "path": format!("/metadata/finalizers/{at}"), "value": CLEANUP_FINALIZER},
            {"op": "remove", "path": format!("/metadata/finalizers/{at}")},
        ]);
        let result = self.json_patch(key, patch).await.map(drop);
        self.count("finalizer", &result);
        // Already gone (the Service went with its last finalizer): nothing left to do.
        match result {
            Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
            other => other,
        }
    }

    async fn json_patch(&self, key: &ObjectKey, patch: Value) -> Result<Service, kube::Error> {
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
        self.api(key)
            .patch(
                &key.name,
                &PatchParams::default(),
                &Patch::<()>::Json(patch),
            )
            .await
    }

    /// Writes `status` (the whole `status` object Gantry wants), if the Service is still at
    /// `resource_version`; returns the Service as written.
    pub async fn write_status(
        &self,
        key: &ObjectKey,
        resource_version: &str,
        status: Value,
    ) -> Result<Service, kube::Error> {
        let patch = json!({"metadata": {"resourceVersion": resource_version}, "status": status});
        let result = self
            .api(key)
            .patch_status(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await;
        self.count("status", &result);
        result
    }

    /// Publishes `note` about the Service `source`; a failure is logged, never fatal.
    pub async fn event(&self, source: &ObjectSource, note: Note) {
        let event = Event {
            type_: if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: note.reason.to_owned(),
            note: Some(truncate(note.message, 1000)),
            action: "Provision".to_owned(),
            secondary: None,
        };
        let reference = ObjectReference {
            api_version: Some("v1".to_owned()),
            kind: Some(source.kind.clone()),
            namespace: Some(source.namespace.clone()),
            name: Some(source.name.clone()),
            uid: Some(source.uid.clone()).filter(|uid| !uid.is_empty()),
            resource_version: Some(source.resource_version.clone()).filter(|rv| !rv.is_empty()),
            field_path: None,
        };
        let result = self.recorder.publish(&event, &reference).await;
        if let Err(error) = &result {
            tracing::warn!(service = %format!("{}/{}", source.namespace, source.name), %error, "could not publish an Event");
        }
        self.count("event", &result);
    }
}

/// At most `max` bytes of `text`, cut at a character boundary (the API bounds Event notes
/// and condition messages).
pub(crate) fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
    }
    text
}
