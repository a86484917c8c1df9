//! Telling the cluster what became of each Service of a reconcile: Events for what changed,
//! the status of each load balancer, and, for a Service Gantry lets go, its address released
//! and its finalizer removed, only after its listeners are gone. The writes of a batch go out
//! together, several at a time (each Service's Events in order), so a thousand Services
//! provisioned at once do not wait for a thousand round trips in a row.

use std::collections::BTreeMap;

use futures::StreamExt;
use lb_config::ObjectSource;
use serde_json::Value;

use super::built::Built;
use super::reconcile::{now_rfc3339, static_reason};
use super::writer::{Note, WriteError, CLEANUP_FINALIZER};
use super::{status, Controller};
use crate::index::service::{Role, ServiceView};
use crate::index::translate::PortOutcome;
use crate::index::ObjectKey;

/// API writes in flight at once.
const WRITES_IN_FLIGHT: usize = 16;

/// The writes a batch owes the cluster.
#[derive(Default)]
pub(super) struct Tell {
    /// Events, by Service, in the order they happened.
    events: BTreeMap<ObjectKey, (ObjectSource, Vec<Note>)>,
    /// Status writes: the Service, the resourceVersion read, the status.
    statuses: Vec<(ObjectKey, String, Value)>,
}

impl Tell {
    /// An Event about the Service `source`.
    pub(super) fn event(&mut self, key: &ObjectKey, source: &ObjectSource, note: Note) {
        self.events
            .entry(key.clone())
            .or_insert_with(|| (source.clone(), Vec::new()))
            .1
            .push(note);
    }
}

impl Controller {
    /// What `key` owes the cluster after the publish: Events for what changed and, for a
    /// load balancer, its status.
    pub(super) fn report(&mut self, key: &ObjectKey, tell: &mut Tell) {
        let Some(tracked) = self.tracked.get_mut(key) else {
            return;
        };
        let Some((role, view)) = self.index.service(key) else {
            return;
        };
        let trouble = tracked.trouble();
        if trouble != tracked.reported {
            if let Some((reason, message)) = &trouble {
                let note = Note {
                    warning: true,
                    reason: static_reason(reason),
                    message: message.clone(),
                };
                tell.event(key, &view.source, note);
            }
            tracked.reported.clone_from(&trouble);
        }
        let skipped: Vec<PortOutcome> = tracked
            .served
            .iter()
            .flat_map(|b| b.ports.iter().filter(|p| p.error.is_some()).cloned())
            .collect();
        if skipped != tracked.skipped_ports {
            if !skipped.is_empty() {
                let ports: Vec<String> = skipped
                    .iter()
                    .map(|p| {
                        format!(
                            "{}/{} ({})",
                            p.port,
                            p.protocol,
                            p.error.unwrap_or_default()
                        )
                    })
                    .collect();
                let note = Note {
                    warning: true,
                    reason: "UnsupportedPort",
                    message: format!("not served: {}; the other ports are", ports.join(", ")),
                };
                tell.event(key, &view.source, note);
            }
            tracked.skipped_ports = skipped;
        }
        let wanted = status::Wanted {
            ingress: tracked
                .served
                .as_ref()
                .map(Built::ingress)
                .unwrap_or_default(),
            trouble,
        };
        let write = (role == Role::LoadBalancer)
            .then(|| {
                status::to_write(
                    view.status.as_ref(),
                    &wanted,
                    view.generation,
                    &now_rfc3339(),
                )
            })
            .flatten();
        // A first configuration whose status is already right was served before a restart.
        let taken_over = tracked.ensured.is_none() && write.is_none();
        let served_front = tracked.served.as_ref().map(Built::front);
        if let (Some(served), false) = (
            &tracked.served,
            served_front == tracked.ensured || taken_over,
        ) {
            let note = Note {
                warning: false,
                reason: "EnsuredLoadBalancer",
                message: format!("serving on {}", served.listeners()),
            };
            tell.event(key, &view.source, note);
        }
        tracked.ensured = served_front;
        if let Some(status) = write {
            tell.statuses
                .push((key.clone(), view.source.resource_version.clone(), status));
        }
    }

    /// Sends what `tell` holds, several writes at a time; a status that could not be written
    /// is tried again later.
    pub(super) async fn tell(&mut self, tell: Tell) {
        let writer = &self.writer;
        futures::stream::iter(tell.events.into_values())
            .for_each_concurrent(WRITES_IN_FLIGHT, |(source, notes)| async move {
                for note in notes {
                    writer.event(&source, note).await;
                }
            })
            .await;
        let written: Vec<_> = futures::stream::iter(tell.statuses)
            .map(|(key, version, status)| async move {
                let result = writer.write_status(&key, &version, status).await;
                (key, result)
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        for (key, result) in written {
            match result {
                Ok(service) => {
                    self.index.apply_service(&service);
                }
                // The holder writes it; if this replica takes over, it looks at every Service.
                Err(WriteError::Fenced) => {}
                Err(error) => {
                    tracing::warn!(service = %key, %error, "could not write the status; retrying");
                    self.later(&key);
                }
            }
        }
    }

    /// Adds the cleanup finalizer to every load balancer of `keys` that lacks it, several at a
    /// time, before anything is provisioned for them (so nothing can be left behind); returns
    /// those it could not be added to (tried again later).
    pub(super) async fn add_finalizers<'a>(
        &mut self,
        keys: impl Iterator<Item = &'a ObjectKey>,
    ) -> Vec<ObjectKey> {
        let needed: Vec<(ObjectKey, Vec<String>)> = keys
            .filter_map(|key| {
                let (role, view) = self.index.service(key)?;
                let lacking = role == Role::LoadBalancer
                    && !view.deleting
                    && !view.finalizers.iter().any(|f| f == CLEANUP_FINALIZER);
                lacking.then(|| (key.clone(), view.finalizers.clone()))
            })
            .collect();
        let writer = &self.writer;
        let written: Vec<_> = futures::stream::iter(needed)
            .map(|(key, finalizers)| async move {
                let result = writer.add_finalizer(&key, &finalizers).await;
                (key, result)
            })
            .buffer_unordered(WRITES_IN_FLIGHT)
            .collect()
            .await;
        let mut failed = Vec::new();
        for (key, result) in written {
            match result {
                Ok(service) => {
                    self.index.apply_service(&service);
                }
                // Another replica holds the Lease and adds it; this one serves meanwhile.
                Err(WriteError::Fenced) => {}
                Err(error) => {
                    tracing::warn!(service = %key, %error, "could not add the cleanup finalizer; retrying");
                    self.later(&key);
                    failed.push(key);
                }
            }
        }
        failed
    }

    /// Lets go of `key` once its listeners are gone: its address back to the pool, Gantry's
    /// part of its status cleared, its finalizer removed. Returns whether an address was freed.
    pub(super) async fn release(&mut self, key: &ObjectKey, had: bool) -> bool {
        let held = !self.addresses.held(key).is_empty();
        self.addresses.release(key);
        if !self.leading {
            // The holder of the Lease tells the cluster.
            return held;
        }
        let Some((role, view)) = self.index.service(key) else {
            return held;
        };
        let view = view.clone();
        let ours = had || held || role == Role::LoadBalancer || self.would_be_ours(&view);
        if !ours {
            return held;
        }
        if had || held {
            let note = Note {
                warning: false,
                reason: "DeletedLoadBalancer",
                message: "the load balancer no longer serves the Service".into(),
            };
            self.writer.event(&view.source, note).await;
        }
        if !view.deleting {
            if let Some(status) = status::to_clear(view.status.as_ref()) {
                match self
                    .writer
                    .write_status(key, &view.source.resource_version, status)
                    .await
                {
                    Ok(_) => {}
                    Err(WriteError::Fenced) => return held,
                    Err(error) => {
                        tracing::warn!(service = %key, %error, "could not clear the status; retrying");
                        self.later(key);
                        return held;
                    }
                }
            }
        }
        if view.finalizers.iter().any(|f| f == CLEANUP_FINALIZER) {
            match self.writer.remove_finalizer(key, &view.finalizers).await {
                Ok(()) | Err(WriteError::Fenced) => {}
                Err(error) => {
                    tracing::warn!(service = %key, %error, "could not remove the cleanup finalizer; retrying");
                    self.later(key);
                }
            }
        }
        held
    }

    /// Whether the cleanup finalizer of a Service Gantry does not serve as a load balancer
    /// is Gantry's to remove: a LoadBalancer Service's only when its class is Gantry's (another
    /// provider's is not); a Service of another type holds it only from when it was a load
    /// balancer (the API server clears the class on that change, so it cannot tell whose), and
    /// every provider removes it then, as the upstream service controller does.
    fn would_be_ours(&self, view: &ServiceView) -> bool {
        if !view.is_load_balancer {
            return true;
        }
        match &view.class {
            Some(class) => *class == self.settings.class,
            None => self.settings.default_class,
        }
    }
}
