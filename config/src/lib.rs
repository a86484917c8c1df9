//! `lb-config`: Gantry's configuration model.
//!
//! Three stages, as in Sozu and River: the input as written ([`file`], all-optional serde
//! types that other sources also fill in from code), validation that reports **every** problem
//! with its field path ([`Problems`], by one [`ModelBuilder`] that every source calls), and the
//! immutable, source-neutral [`Model`] the runtime consumes. [`diff`] compares two models into
//! typed [`Change`]s precise enough to act on, so a reload applies only what changed. No
//! sockets and no async here; the only IO is reading the config file and the certificate and
//! plugin files it names.

mod addresses;
mod build;
pub mod diff;
pub mod file;
pub mod fuzzing;
mod lenient;
pub mod model;
pub mod names;
mod problems;
mod routing;
mod warnings;

use std::path::{Path, PathBuf};

pub use build::{
    builtin_port_settings, parse_range, Admission, Admitted, ModelBuilder, BUILTIN_AFFINITIES,
    BUILTIN_BALANCERS, BUILTIN_HEALTH, DEFAULT_ADMIN_LISTEN, DEFAULT_AFFINITY_ENTRIES,
    DEFAULT_BALANCER, DEFAULT_BATCH_DELAY, DEFAULT_BIRD_DIRECTORY, DEFAULT_BIRD_SOCKET,
    DEFAULT_KEEPALIVED_DIRECTORY, DEFAULT_LOAD_BALANCER_CLASS, MAX_BATCH_DELAY, MAX_PEERS,
    MAX_POOLS, MAX_POOL_ENTRIES, MAX_WEIGHT,
};
pub use diff::{
    diff, diff_services, Change, PortAspect, PortAspects, RuntimeAspect, RuntimeAspects,
};
pub use lenient::{DurationText, Lenient};
pub use model::*;
pub use problems::{FieldPath, Problem, Problems};
pub use warnings::Warning;

/// Why a configuration could not become a model.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not YAML of the expected overall shape.
    #[error("{0}")]
    Syntax(String),
    /// The file parsed; these are all the problems with its contents.
    #[error("{} problem{}:\n  {}", .0.len(), if .0.len() == 1 { "" } else { "s" }, .0.to_string().replace('\n', "\n  "))]
    Invalid(Problems),
}

/// Reads, parses and validates a configuration file. Relative certificate paths resolve
/// against the file's folder.
pub fn load_file(path: &Path) -> Result<Model, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    parse_str(&text, base_dir)
}

/// Parses and validates configuration text; relative paths resolve against `base_dir`.
pub fn parse_str(text: &str, base_dir: &Path) -> Result<Model, ConfigError> {
    let file = parse_file(text)?;
    ModelBuilder::from_file(file, base_dir)
        .finish()
        .map_err(ConfigError::Invalid)
}

/// Reads, parses and validates a configuration file like [`load_file`], and returns the
/// builder holding it: the starting point other sources' services are added to.
pub fn load_builder(path: &Path) -> Result<ModelBuilder, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    let base_dir = path.parent().unwrap_or(Path::new("."));
    builder_from_str(&text, base_dir)
}

/// [`load_builder`] for configuration text; relative paths resolve against `base_dir`.
pub fn builder_from_str(text: &str, base_dir: &Path) -> Result<ModelBuilder, ConfigError> {
    let builder = ModelBuilder::from_file(parse_file(text)?, base_dir);
    builder.clone().finish().map_err(ConfigError::Invalid)?;
    Ok(builder)
}

/// Every certificate and key file a configuration names, read from whatever parts of it parse,
/// resolved like [`load_file`] resolves them. A reload watcher watches these even when the file
/// is invalid, so fixing a missing key file is noticed.
pub fn files_named_by(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let Ok(file) = parse_file(&text) else {
        return Vec::new();
    };
    let base_dir = path.parent().unwrap_or(Path::new("."));
    let mut files = Vec::new();
    for service in file.services.iter().filter_map(Lenient::parsed) {
        for port in service.ports.iter().filter_map(Lenient::parsed) {
            let Some(tls) = port.tls.as_ref().and_then(Lenient::parsed) else {
                continue;
            };
            for cert in tls.certificates.iter().filter_map(Lenient::parsed) {
                let named: [&Option<String>; 2] = [&cert.cert, &cert.key];
                files.extend(named.into_iter().flatten().map(|f| base_dir.join(f)));
            }
        }
    }
    let plugins = file.plugins.iter().flatten();
    for plugin in plugins.filter_map(|(_, p)| p.parsed()) {
        files.extend(plugin.file.iter().map(|f| base_dir.join(f)));
    }
    files.sort();
    files.dedup();
    files
}

fn parse_file(text: &str) -> Result<file::FileConfig, ConfigError> {
    if text.trim().is_empty() {
        return Ok(file::FileConfig::default());
    }
    let deserializer = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        match path.as_str() {
            "." | "" => ConfigError::Syntax(inner.to_string()),
            _ => ConfigError::Syntax(format!("{path}: {inner}")),
        }
    })
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_kubernetes;
#[cfg(test)]
mod tests_routing;
#[cfg(test)]
mod tests_udp;
