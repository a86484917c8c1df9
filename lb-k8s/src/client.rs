//! The connection to the cluster: a kubeconfig (the appliance outside the cluster) or the
//! pod's service account (in the cluster), as kube-rs reads them.

use std::path::PathBuf;
use std::time::Duration;

use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// Where the credentials come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// A kubeconfig file, with an optional context (its current one otherwise).
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// The context to use.
        context: Option<String>,
    },
    /// The pod's service account (`KUBERNETES_SERVICE_HOST`, the mounted token and CA).
    InCluster,
}

/// Why there is no client.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The kubeconfig could not be read or used.
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        source: kube::config::KubeconfigError,
    },
    /// Not in a pod, or its service account is not mounted.
    #[error("in-cluster credentials: {0}")]
    InCluster(#[from] kube::config::InClusterError),
    /// The client could not be built (TLS settings, proxy).
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// How long a request to the API server may take to connect; a watch has no read timeout
/// (it is held open on purpose), every other request is bounded by the watcher's own timeout.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A client for the cluster `credentials` name. Must run inside the Tokio runtime.
pub async fn connect(credentials: &Credentials) -> Result<Client, ConnectError> {
    let mut config = match credentials {
        Credentials::Kubeconfig { path, context } => {
            let kubeconfig =
                Kubeconfig::read_from(path).map_err(|source| ConnectError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?;
            let options = KubeConfigOptions {
                context: context.clone(),
                ..KubeConfigOptions::default()
            };
            Config::from_custom_kubeconfig(kubeconfig, &options)
                .await
                .map_err(|source| ConnectError::Kubeconfig {
                    path: path.clone(),
                    source,
                })?
        }
        Credentials::InCluster => Config::incluster()?,
    };
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    Ok(Client::try_from(config)?)
}
