//! Gantry's writes to the API server: the cleanup finalizer (JSON patches that test the list
//! they change, so a concurrent change makes them fail rather than clobber it), the status
//! (a merge patch of the `status` subresource, conditional on the resourceVersion read, so
//! other writers' conditions are never lost), and Events (`events.k8s.io`, deduplicated into
//! series by kube's recorder). Every write goes through the replica's [`Fence`]: only the
//! holder of the Lease writes, and never past its right to.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use lb_config::ObjectSource;
use serde_json::{json, Value};

use super::lease::{Fence, Fenced};
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
    fence: Fence,
}

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The API server refused it, or could not be reached.
    #[error(transparent)]
    Api(#[from] kube::Error),
    /// This replica does not hold the Lease (or its right to write ended): another writes.
    #[error("another replica holds the Lease and writes")]
    Fenced,
}

impl From<Fenced> for WriteError {
    fn from(_: Fenced) -> Self {
        WriteError::Fenced
    }
}

impl WriteError {
    /// Whether the API server answered with `code`.
    pub fn is_status(&self, code: u16) -> bool {
        matches!(self, WriteError::Api(kube::Error::Api(status)) if status.code == code)
    }
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
    /// Writes through `client` while `fence` allows, reporting Events as `instance`.
    pub fn new(
        client: Client,
        instance: &str,
        telemetry: Arc<dyn Telemetry>,
        fence: Fence,
    ) -> Self {
        let reporter = Reporter {
            controller: CONTROLLER.to_owned(),
            instance: Some(instance.to_owned()),
        };
        Writer {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            telemetry,
            fence,
        }
    }

    fn api(&self, key: &ObjectKey) -> Api<Service> {
        Api::namespaced(self.client.clone(), &key.namespace)
    }

    fn count<T>(&self, what: &str, result: &Result<T, WriteError>) {
        let outcome = match result {
            Ok(_) => "ok",
            Err(WriteError::Fenced) => "fenced",
            Err(WriteError::Api(_)) => "error",
        };
        self.telemetry.api_write(what, outcome);
    }

    /// Adds the cleanup finalizer to `finalizers` (the Service's list as read); returns the
    /// Service as written.
    pub async fn add_finalizer(
        &self,
        key: &ObjectKey,
        finalizers: &[String],
    ) -> Result<Service, WriteError> {
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
    ) -> Result<(), WriteError> {
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
            Err(error) if error.is_status(404) => Ok(()),
            other => other,
        }
    }

    async fn json_patch(&self, key: &ObjectKey, patch: Value) -> Result<Service, WriteError> {
        let patch: json_patch::Patch =
            serde_json::from_value(patch).map_err(kube::Error::SerdeError)?;
        let api = self.api(key);
        let params = PatchParams::default();
        let patch = Patch::<()>::Json(patch);
        let write = api.patch(&key.name, &params, &patch);
        Ok(self.fence.guard(write).await??)
    }

    /// Writes `status` (the whole `status` object Gantry wants), if the Service is still at
    /// `resource_version`; returns the Service as written.
    pub async fn write_status(
        &self,
        key: &ObjectKey,
        resource_version: &str,
        status: Value,
    ) -> Result<Service, WriteError> {
        let patch = json!({"metadata": {"resourceVersion": resource_version}, "status": status});
        let api = self.api(key);
        let params = PatchParams::default();
        let patch = Patch::Merge(patch);
        let write = api.patch_status(&key.name, &params, &patch);
        let result = match self.fence.guard(write).await {
            Ok(written) => written.map_err(WriteError::from),
            Err(fenced) => Err(fenced.into()),
        };
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
        let result = match self
            .fence
            .guard(self.recorder.publish(&event, &reference))
            .await
        {
            Ok(published) => published.map_err(WriteError::from),
            Err(fenced) => Err(fenced.into()),
        };
        if let Err(WriteError::Api(error)) = &result {
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
