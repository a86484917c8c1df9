//! The sources of the model and how they combine: the file's sections and services (kept as
//! the [`ModelBuilder`] that checked them) and the Kubernetes source's services. Whichever
//! source changes, the model is rebuilt from the last good state of both, under one lock, so
//! a file reload and a Kubernetes update never interleave. The file's services come first:
//! a Kubernetes service that clashes with one of them (a name, an address and port) is
//! refused and reported on its object, never silently preferred.

use std::sync::Arc;

use lb_config::file::ServiceFile;
use lb_config::model::Service;
use lb_config::{Admission, Change, ConfigError, FieldPath, ModelBuilder, Problems};
use lb_k8s::plane::Candidate;

use super::{ApplyError, Gantry};

/// The last good state of every source.
#[derive(Default)]
pub(super) struct Sources {
    /// The file, as checked; `None` for a Gantry started from a bare model (tests, the demo).
    file: Option<ModelBuilder>,
    /// The Kubernetes Services served (each as the services of the model it became), in the
    /// order they were admitted.
    kubernetes: Vec<(FieldPath, Vec<Arc<Service>>)>,
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
            kubernetes: Vec::new(),
        }
    }
}

impl Gantry {
    /// Serves the file `builder` holds (checked: [`lb_config::load_builder`]) beside the
    /// Kubernetes services; a Kubernetes service the new file clashes with is dropped (and
    /// reported by the Kubernetes source at its next update).
    pub async fn apply_file(&self, builder: ModelBuilder) -> Result<Vec<Change>, FileApplyError> {
        let mut sources = self.inner.sources.lock().await;
        let mut combined = builder.clone();
        let kept: Vec<(FieldPath, Vec<Vec<Arc<Service>>>)> = sources
            .kubernetes
            .iter()
            .map(|(origin, services)| (origin.clone(), vec![services.clone()]))
            .collect();
        let outcomes = combined.admit(kept.clone());
        let mut kubernetes = Vec::new();
        for ((origin, mut services), outcome) in kept.into_iter().zip(outcomes) {
            match outcome {
                Admission::Admitted { .. } => {
                    kubernetes.extend(services.pop().map(|s| (origin, s)))
                }
                Admission::Refused(problems) => {
                    tracing::warn!(%origin, "dropped: it clashes with the file: {problems}")
                }
            }
        }
        let model = combined.finish().map_err(ConfigError::Invalid)?;
        let changes = self.apply(model).await?;
        self.inner
            .file
            .store(Some(std::sync::Arc::new(builder.clone())));
        sources.file = Some(builder);
        sources.kubernetes = kubernetes;
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

    /// Serves exactly `candidates` as the Kubernetes services (see
    /// [`lb_k8s::plane::DataPlane::publish`]). A candidate whose listener cannot be bound or
    /// set up is refused with the error, and the rest applied without it.
    pub async fn publish_kubernetes(
        &self,
        candidates: Vec<Candidate>,
    ) -> Result<Vec<Admission>, String> {
        let mut sources = self.inner.sources.lock().await;
        let Some(file) = sources.file.clone() else {
            return Err("Gantry runs without a configuration file".into());
        };
        let mut refused: Vec<Option<Problems>> = vec![None; candidates.len()];
        loop {
            let offered: Vec<(FieldPath, Vec<Vec<Arc<Service>>>)> = candidates
                .iter()
                .zip(&refused)
                .filter(|(_, refused)| refused.is_none())
                .map(|(c, _)| (c.origin.clone(), c.alternatives.clone()))
                .collect();
            let mut combined = file.clone();
            let outcomes = combined.admit(offered.clone());
            let model = combined.finish().map_err(|problems| problems.to_string())?;
            match self.apply(model).await {
                Ok(_) => {
                    sources.kubernetes = offered
                        .iter()
                        .zip(&outcomes)
                        .filter_map(|((origin, alternatives), outcome)| match outcome {
                            Admission::Admitted { alternative, .. } => {
                                Some((origin.clone(), alternatives.get(*alternative)?.clone()))
                            }
                            Admission::Refused(_) => None,
                        })
                        .collect();
                    // The candidates refused for an error first, the builder's outcomes for
                    // the rest, in the order offered.
                    let mut outcomes = outcomes.into_iter();
                    return Ok(refused
                        .into_iter()
                        .map(|refusal| match refusal {
                            Some(problems) => Admission::Refused(problems),
                            None => outcomes
                                .next()
                                .unwrap_or(Admission::Refused(Problems::default())),
                        })
                        .collect());
                }
                Err(error) => {
                    // Refuse the service the error is about, and try again without it.
                    let culprit = candidates
                        .iter()
                        .enumerate()
                        .find(|(i, c)| refused[*i].is_none() && blames(&error, c));
                    let Some((i, candidate)) = culprit else {
                        return Err(error.to_string());
                    };
                    let mut problems = Problems::default();
                    problems.push(&candidate.origin, error.to_string());
                    refused[i] = Some(problems);
                }
            }
        }
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
