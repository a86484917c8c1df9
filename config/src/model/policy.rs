//! The policy parts of the model: a port's balancer, affinity and health policies, the
//! shadows beside them, where each plugin comes from, and what a hash key is made of.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Serialize, Serializer};

/// A port's balancing policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct BalancerPolicy {
    /// Which plugin.
    pub policy: PolicySource,
    /// The operator's parameters, sorted by name.
    pub params: Vec<(String, String)>,
    /// What the request's hash key is made of.
    pub hash_key: HashKey,
}

/// A port's session-affinity policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AffinityPolicy {
    /// Which plugin (never [`PolicySource::Native`]).
    pub policy: PolicySource,
    /// The operator's parameters, sorted by name.
    pub params: Vec<(String, String)>,
    /// Capacity of the port's table of remembered keys.
    pub max_entries: u32,
}

/// One health policy of a port.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct HealthPolicy {
    /// Which plugin (never [`PolicySource::Native`]).
    pub policy: PolicySource,
    /// The operator's parameters, sorted by name.
    pub params: Vec<(String, String)>,
}

/// Where a policy plugin comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum PolicySource {
    /// Gantry's own round-robin, no plugin involved (`native:round-robin`): what answers when
    /// a plugin faults, and the baseline a plugin's cost is measured against.
    Native,
    /// Embedded in Gantry (`builtin:NAME`).
    Builtin(String),
    /// A user's component file, named under `plugins:`.
    File(Arc<PluginBinary>),
}

impl Serialize for PolicySource {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            PolicySource::Native => s.serialize_str("native:round-robin"),
            PolicySource::Builtin(name) => s.serialize_str(&format!("builtin:{name}")),
            PolicySource::File(plugin) => plugin.serialize(s),
        }
    }
}

/// A user's plugin file, read and hashed when the configuration was loaded.
#[derive(Clone, Serialize)]
pub struct PluginBinary {
    /// Its name under `plugins:`.
    pub name: String,
    /// The file.
    pub file: PathBuf,
    /// SHA-256 of the bytes, hex.
    pub sha256: String,
    /// The component, as read.
    #[serde(skip)]
    pub bytes: Arc<[u8]>,
}

impl PartialEq for PluginBinary {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name && self.file == other.file && self.sha256 == other.sha256
    }
}

impl fmt::Debug for PluginBinary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginBinary")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// What a request's hash key is computed from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HashKey {
    /// The client's IP address.
    ClientIp,
    /// A request header (lowercase name); the client IP when absent.
    Header(String),
    /// A cookie; the client IP when absent.
    Cookie(String),
}

impl Serialize for HashKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HashKey::ClientIp => s.serialize_str("client_ip"),
            HashKey::Header(name) => s.serialize_str(&format!("header:{name}")),
            HashKey::Cookie(name) => s.serialize_str(&format!("cookie:{name}")),
        }
    }
}

/// A port's shadowed roles: each a policy that sees the calls the serving one sees, with the
/// same inputs, and whose answers are compared and counted but never used.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Shadows {
    /// Shadows the balancer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balancer: Option<ShadowPolicy>,
    /// Shadows the session affinity (the port has one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub affinity: Option<ShadowPolicy>,
}

impl Shadows {
    /// Nothing is shadowed.
    pub fn is_empty(&self) -> bool {
        self.balancer.is_none() && self.affinity.is_none()
    }
}

/// A shadow policy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ShadowPolicy {
    /// Which plugin.
    pub policy: PolicySource,
    /// The operator's parameters, sorted by name.
    pub params: Vec<(String, String)>,
    /// Calls the shadow also sees, per million of the serving policy's (100 to 1000000).
    pub sample_per_million: u32,
}
