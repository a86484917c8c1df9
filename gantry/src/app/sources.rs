//! The sources of the model and how they combine: the file's sections and services (kept as
//! the [`ModelBuilder`] that checked them) and the Kubernetes source's services (kept as
//! [`Admitted`] beside them: what each holds stays indexed). Either source changes the model
//! under one lock, so a file reload and a Kubernetes update never interleave. A file reload
//! rebuilds the model from both; a Kubernetes update changes only the services it names, at
//! their cost, however many others serve. The file's services come first: a Kubernetes
//! service that clashes with one of them (a name, an address and port) is refused and
//! reported on its object, never silently preferred.

use std::sync::Arc;

use lb_config::file::ServiceFile;
use lb_config::model::Service;
use lb_config::{
    Admission, Admitted, Change, ConfigError, FieldPath, Model, ModelBuilder, Problems,
};
use lb_k8s::plane::{Candidate, DataPlane, Held, Update};

use super::{ApplyError, Gantry};

/// The appliance as the Kubernetes source sees it.
#[async_trait::async_trait]
impl DataPlane for Gantry {
    fn check(&self, origin: &FieldPath, spec: ServiceFile) -> Result<Service, Problems> {
        self.check_kubernetes(origin, spec)
    }

    async fn publish(&self, update: Update) -> Result<Vec<Admission>, String> {
        self.publish_kubernetes(update).await
    }
}

/// The last good state of every source.
#[derive(Default)]
pub(super) struct Sources {
    /// The file, as checked; `None` for a Gantry started from a bare model (tests, the demo).
    file: Option<ModelBuilder>,
    /// The Kubernetes Services served, admitted beside the file's; `None` until the source
    /// first publishes.
    kubernetes: Option<Admitted>,
}

/// Why the file could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum FileApplyError {
    /// The file is invalid (the same messages as `gantry check`), or clashes with what the
    /// Kubernetes source serves.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// The model could not be applied.
    #[error("{0}")]
    Apply(#[from] ApplyError),
}

impl Sources {
    pub(super) fn with_file(file: Option<ModelBuilder>) -> Self {
        Sources {
            file,
            kubernetes: None,
        }
    }
}

impl Gantry {
    /// Serves the file `builder` holds (checked: [`lb_config::load_builder`]) beside the
    /// Kubernetes services; a Kubernetes service the new file clashes with is dropped (and
    /// reported by the Kubernetes source at its next update).
    pub async fn apply_file(&self, builder: ModelBuilder) -> Result<Vec<Change>, FileApplyError> {
        let mut sources = self.inner.sources.lock().await;
        let mut admitted = builder.admitted();
        for (origin, services) in sources.kubernetes.iter().flat_map(Admitted::iter) {
            if let Admission::Refused(problems) =
                admitted.admit(origin.clone(), vec![services.to_vec()])
            {
                tracing::warn!(%origin, "dropped: it clashes with the file: {problems}");
            }
        }
        let mut combined = builder.clone();
        combined.add_admitted(&admitted);
        let model = combined.finish().map_err(ConfigError::Invalid)?;
        let changes = self.apply(model).await?;
        self.inner
            .file
            .store(Some(std::sync::Arc::new(builder.clone())));
        sources.file = Some(builder);
        sources.kubernetes = sources.kubernetes.is_some().then_some(admitted);
        Ok(changes)
    }

    /// Checks a service of the Kubernetes source against the file's settings.
    pub fn check_kubernetes(
        &self,
        origin: &FieldPath,
        spec: ServiceFile,
    ) -> Result<Service, Problems> {
        match self.inner.file.load_full() {
            Some(builder) => builder.check_service(origin, spec),
            None => {
                let mut problems = Problems::default();
                problems.push(
                    origin,
                    "Gantry runs without a configuration file to check it against",
                );
                Err(problems)
            }
        }
    }

    /// Applies an update of the Kubernetes services (see
    /// [`lb_k8s::plane::DataPlane::publish`]). A candidate whose listener cannot be bound or
    /// set up is refused with the error, and the rest applied without it.
    pub async fn publish_kubernetes(&self, update: Update) -> Result<Vec<Admission>, String> {
        let mut sources = self.inner.sources.lock().await;
        let Some(file) = sources.file.clone() else {
            return Err("Gantry runs without a configuration file".into());
        };
        match sources.kubernetes.as_mut() {
            Some(admitted) if !update.replace => self.update_kubernetes(admitted, update).await,
            _ => {
                let (outcomes, admitted) = self.replace_kubernetes(&file, update.offered).await?;
                sources.kubernetes = Some(admitted);
                Ok(outcomes)
            }
        }
    }

    /// Serves exactly `offered` as the Kubernetes services: the model rebuilt from the file's
    /// and theirs.
    async fn replace_kubernetes(
        &self,
        file: &ModelBuilder,
        offered: Vec<Candidate>,
    ) -> Result<(Vec<Admission>, Admitted), String> {
        let mut refused: Vec<Option<Problems>> = vec![None; offered.len()];
        loop {
            let mut admitted = file.admitted();
            let outcomes = admit(&mut admitted, &offered, &refused);
            let mut combined = file.clone();
            combined.add_admitted(&admitted);
            let model = combined.finish().map_err(|problems| problems.to_string())?;
            match self.apply(model).await {
                Ok(_) => return Ok((merge(refused, outcomes), admitted)),
                Err(error) => refuse_culprit(&error, &offered, &mut refused)?,
            }
        }
    }

    /// Applies `update` to what `admitted` holds, in place: the services it names are
    /// withdrawn and admitted again, and the running model changes in those only.
    async fn update_kubernetes(
        &self,
        admitted: &mut Admitted,
        update: Update,
    ) -> Result<Vec<Admission>, String> {
        // What every origin the update names held, to tell the model what went and to put
        // back should nothing apply.
        let before = update.withdraw(admitted);
        let offered = update.offered;
        let mut refused: Vec<Option<Problems>> = vec![None; offered.len()];
        loop {
            let outcomes = admit(admitted, &offered, &refused);
            let applied = self
                .apply_with(|old| {
                    let model = patched(old, &before, admitted);
                    let names = before
                        .values()
                        .flatten()
                        .flatten()
                        .chain(before.keys().filter_map(|o| admitted.get(o)).flatten())
                        .map(|s| s.name.as_str());
                    let changes = lb_config::diff_services(old, &model, names);
                    (model, changes)
                })
                .await;
            let error = match applied {
                Ok(_) => return Ok(merge(refused, outcomes)),
                Err(error) => error,
            };
            for candidate in &offered {
                admitted.withdraw(&candidate.origin);
            }
            if let Err(message) = refuse_culprit(&error, &offered, &mut refused) {
                // Nothing applied: everything is as it was.
                for (origin, held) in before {
                    if let Some(held) = held {
                        admitted.admit(origin, vec![held]);
                    }
                }
                return Err(message);
            }
        }
    }
}

/// Offers the candidates not refused to `admitted`, in order.
fn admit(
    admitted: &mut Admitted,
    offered: &[Candidate],
    refused: &[Option<Problems>],
) -> Vec<Option<Admission>> {
    offered
        .iter()
        .zip(refused)
        .map(|(candidate, refusal)| refusal.is_none().then(|| candidate.offer(admitted)))
        .collect()
}

/// One outcome per candidate: its refusal for an error, else what admitting it gave.
fn merge(refused: Vec<Option<Problems>>, outcomes: Vec<Option<Admission>>) -> Vec<Admission> {
    refused
        .into_iter()
        .zip(outcomes)
        .map(|(refusal, outcome)| match (refusal, outcome) {
            (Some(problems), _) => Admission::Refused(problems),
            (None, Some(outcome)) => outcome,
            (None, None) => Admission::Refused(Problems::default()),
        })
        .collect()
}

/// Refuses the candidate `error` is about (it is tried again without it); `Err` when it is
/// about none of them.
fn refuse_culprit(
    error: &ApplyError,
    offered: &[Candidate],
    refused: &mut [Option<Problems>],
) -> Result<(), String> {
    let culprit = offered
        .iter()
        .enumerate()
        .find(|(i, c)| refused[*i].is_none() && blames(error, c));
    let Some((i, candidate)) = culprit else {
        return Err(error.to_string());
    };
    let mut problems = Problems::default();
    problems.push(&candidate.origin, error.to_string());
    refused[i] = Some(problems);
    Ok(())
}

/// The running model with the services of the origins `before` names as `admitted` holds
/// them now: the others are the running model's own (`Arc`s, not copies).
fn patched(old: &Model, before: &Held, admitted: &Admitted) -> Model {
    let mut services = old.services.clone();
    for service in before.values().flatten().flatten() {
        services.remove(&service.name);
    }
    for service in before
        .keys()
        .filter_map(|origin| admitted.get(origin))
        .flatten()
    {
        services.insert(service.name.clone(), Arc::clone(service));
    }
    Model {
        admin: old.admin.clone(),
        runtime: old.runtime.clone(),
        plugin_limits: old.plugin_limits,
        services,
        kubernetes: old.kubernetes.clone(),
        routing: old.routing.clone(),
    }
}

/// Whether `error` is about (one of the configurations of) `candidate`.
fn blames(error: &ApplyError, candidate: &Candidate) -> bool {
    let named = |service: &str| {
        candidate
            .alternatives
            .iter()
            .flatten()
            .any(|s| s.name == service)
    };
    match error {
        ApplyError::Bind { key, .. } | ApplyError::Tls { key, .. } => named(&key.service),
        ApplyError::PortHeld { key, .. } => key.as_ref().is_some_and(|key| named(&key.service)),
        ApplyError::Policy(policy) => policy.origin.starts_with(&candidate.origin),
        ApplyError::Admin { .. } | ApplyError::Plugins(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::PolicyError;
    use lb_plugins::PluginError;

    #[test]
    fn a_policy_error_blames_the_service_whose_path_it_lies_under_not_one_named_alike() {
        let path = |name: &str| FieldPath::object("Service", name);
        let error = ApplyError::Policy(PolicyError {
            origin: path("default/web-2").field("ports").index(0),
            field: "balancer".to_owned(),
            source: PluginError::Rejected {
                plugin: "p".to_owned(),
                message: "no".to_owned(),
            },
        });
        let candidate = |name: &str| Candidate {
            origin: path(name),
            alternatives: Vec::new(),
        };
        assert!(blames(&error, &candidate("default/web-2")));
        assert!(
            !blames(&error, &candidate("default/web")),
            "default/web-2's error refused default/web"
        );
    }
}
