//! Validation of the policy parts of a configuration: the `plugins:` files (read, hashed and
//! checked against their pins here, so a changed file is a changed model) and each port's
//! `balancer:`, `affinity:` and `health:`. Whether a plugin's `configure` accepts its
//! parameters is for the host to say (it runs the plugin); this module checks the rest.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::file::{AffinityFile, BalancerFile, HealthFile, PluginFile, ShadowFile};
use crate::lenient::Lenient;
use crate::model::{
    AffinityPolicy, BalancerPolicy, HashKey, HealthPolicy, PluginBinary, PolicySource, ShadowPolicy,
};
use crate::problems::{FieldPath, Problems};

/// The balancers embedded in Gantry, usable as `builtin:NAME`. The `gantry` build embeds
/// exactly these (a test in lb-plugins holds the two lists together).
pub const BUILTIN_BALANCERS: &[&str] = &[
    "round-robin",
    "random",
    "least-request",
    "maglev",
    "ring-hash",
];

/// The policy of a port that names none.
pub const DEFAULT_BALANCER: &str = "round-robin";

/// The session-affinity policies embedded in Gantry.
pub const BUILTIN_AFFINITIES: &[&str] = &["client-ip", "cookie"];

/// The health policies embedded in Gantry.
pub const BUILTIN_HEALTH: &[&str] = &["tcp-check", "http-check", "outlier"];

/// Default capacity of a port's affinity table.
pub const DEFAULT_AFFINITY_ENTRIES: u32 = 1 << 18;

/// User plugins by name; `declared` also holds the names whose file failed to load, so a port
/// naming one is not reported a second time.
#[derive(Clone)]
pub(super) struct Plugins {
    loaded: BTreeMap<String, Arc<PluginBinary>>,
    declared: BTreeSet<String>,
}

pub(super) fn build_plugins(
    file: Option<BTreeMap<String, Lenient<PluginFile>>>,
    base_dir: &Path,
    path: &FieldPath,
    p: &mut Problems,
) -> Plugins {
    let mut plugins = Plugins {
        loaded: BTreeMap::new(),
        declared: BTreeSet::new(),
    };
    for (name, item) in file.unwrap_or_default() {
        let entry_path = path.key(&name);
        plugins.declared.insert(name.clone());
        if name.starts_with("builtin:") || name.is_empty() {
            p.push(
                &entry_path,
                "plugin names may not be empty or start with `builtin:`",
            );
            continue;
        }
        let item = match item {
            Lenient::Parsed(item) => item,
            Lenient::Invalid {
                path: inner,
                message,
            } => {
                p.push_nested(&entry_path, &inner, &message);
                continue;
            }
        };
        let Some(file) = item.file else {
            p.push(&entry_path.field("file"), "required");
            continue;
        };
        let file = base_dir.join(file);
        let bytes = match std::fs::read(&file) {
            Ok(bytes) => bytes,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                p.push(
                    &entry_path.field("file"),
                    format!("file not found: {}", file.display()),
                );
                continue;
            }
            Err(err) => {
                p.push(
                    &entry_path.field("file"),
                    format!("cannot read {}: {err}", file.display()),
                );
                continue;
            }
        };
        let sha256: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        if let Some(pin) = item.sha256 {
            let pin = pin.trim().to_ascii_lowercase();
            if pin.len() != 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
                p.push(&entry_path.field("sha256"), "must be 64 hex digits");
                continue;
            }
            if pin != sha256 {
                p.push(
                    &entry_path.field("sha256"),
                    format!(
                        "{} has SHA-256 {sha256}, not the pinned {pin}",
                        file.display()
                    ),
                );
                continue;
            }
        }
        let plugin = PluginBinary {
            name: name.clone(),
            file,
            sha256,
            bytes: bytes.into(),
        };
        plugins.loaded.insert(name, Arc::new(plugin));
    }
    plugins
}

pub(super) fn build_balancer(
    file: Option<BalancerFile>,
    plugins: &Plugins,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<BalancerPolicy> {
    let file = file.unwrap_or_default();
    let text = file
        .policy
        .unwrap_or_else(|| format!("builtin:{DEFAULT_BALANCER}"));
    let policy = if text == "native:round-robin" {
        Some(PolicySource::Native)
    } else {
        policy_source(
            &text,
            BUILTIN_BALANCERS,
            "native:round-robin, ",
            plugins,
            path,
            p,
        )
    };
    let params = build_params(file.params, path, p);

    let hash_key = match file.hash_key.as_deref() {
        None | Some("client_ip") => Some(HashKey::ClientIp),
        Some(spec) => match spec.split_once(':') {
            Some(("header", name)) if http_token(name) => {
                Some(HashKey::Header(name.to_ascii_lowercase()))
            }
            Some(("cookie", name)) if http_token(name) => Some(HashKey::Cookie(name.to_owned())),
            _ => {
                p.push(
                    &path.field("hash_key"),
                    format!("`{spec}` is not `client_ip`, `header:NAME` or `cookie:NAME`"),
                );
                None
            }
        },
    };
    Some(BalancerPolicy {
        policy: policy?,
        params: params?,
        hash_key: hash_key?,
    })
}

pub(super) fn build_affinity(
    file: AffinityFile,
    plugins: &Plugins,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<AffinityPolicy> {
    let policy = required_policy(file.policy, BUILTIN_AFFINITIES, plugins, path, p);
    let params = build_params(file.params, path, p);
    let max_entries = match file.max_entries {
        None => Some(DEFAULT_AFFINITY_ENTRIES),
        Some(n @ 1..=16_777_216) => Some(n),
        Some(n) => {
            p.push(
                &path.field("max_entries"),
                format!("{n} is out of range 1..=16777216"),
            );
            None
        }
    };
    Some(AffinityPolicy {
        policy: policy?,
        params: params?,
        max_entries: max_entries?,
    })
}

pub(super) fn build_health(
    file: HealthFile,
    plugins: &Plugins,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<HealthPolicy> {
    let policy = required_policy(file.policy, BUILTIN_HEALTH, plugins, path, p);
    let params = build_params(file.params, path, p);
    Some(HealthPolicy {
        policy: policy?,
        params: params?,
    })
}

/// What a shadow stands beside: its policy is one of the same kind.
#[derive(Clone, Copy)]
pub(super) enum Shadowed {
    Balancer,
    Affinity,
}

/// A `shadow:` of a balancer or an affinity; `None` when it has a problem (reported).
pub(super) fn build_shadow(
    file: ShadowFile,
    shadowed: Shadowed,
    plugins: &Plugins,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<ShadowPolicy> {
    let policy = match (shadowed, file.policy) {
        (Shadowed::Balancer, Some(text)) if text == "native:round-robin" => {
            Some(PolicySource::Native)
        }
        (Shadowed::Balancer, text) => required_policy(text, BUILTIN_BALANCERS, plugins, path, p),
        (Shadowed::Affinity, text) => required_policy(text, BUILTIN_AFFINITIES, plugins, path, p),
    };
    let params = build_params(file.params, path, p);
    let sample_per_million = match file.sample_percent {
        None => Some(1_000_000),
        Some(percent) if (0.01..=100.0).contains(&percent) => {
            // In range, so the product is within 100..=1_000_000 and the cast exact.
            Some((percent * 10_000.0).round() as u32)
        }
        Some(percent) => {
            p.push(
                &path.field("sample_percent"),
                format!("{percent} is out of range 0.01..=100"),
            );
            None
        }
    };
    Some(ShadowPolicy {
        policy: policy?,
        params: params?,
        sample_per_million: sample_per_million?,
    })
}

/// A `policy:` that has no default (affinity, health): reported when missing.
fn required_policy(
    text: Option<String>,
    builtins: &[&str],
    plugins: &Plugins,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<PolicySource> {
    let Some(text) = text else {
        p.push(
            &path.field("policy"),
            format!("required: one of {}", builtin_list(builtins)),
        );
        return None;
    };
    policy_source(&text, builtins, "", plugins, path, p)
}

/// The plugin `text` names: `builtin:NAME` from `builtins`, or an entry of `plugins:`.
/// `also` lists further accepted spellings for the message.
fn policy_source(
    text: &str,
    builtins: &[&str],
    also: &str,
    plugins: &Plugins,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<PolicySource> {
    if let Some(name) = text.strip_prefix("builtin:") {
        if builtins.contains(&name) {
            return Some(PolicySource::Builtin(name.to_owned()));
        }
        p.push(
            &path.field("policy"),
            format!(
                "unknown built-in `{name}`; built-ins are {}",
                builtin_list(builtins)
            ),
        );
        return None;
    }
    if let Some(plugin) = plugins.loaded.get(text) {
        return Some(PolicySource::File(plugin.clone()));
    }
    if !plugins.declared.contains(text) {
        p.push(
            &path.field("policy"),
            format!(
                "`{text}` is neither a built-in ({}), {also}nor a plugin named under `plugins:`",
                builtin_list(builtins)
            ),
        );
    } // else its own problem is already reported under `plugins:`
    None
}

/// `params:` as text; every non-scalar value is reported.
fn build_params(
    file: Option<BTreeMap<String, serde_yaml::Value>>,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<Vec<(String, String)>> {
    let mut params = Vec::new();
    let mut ok = true;
    for (name, value) in file.unwrap_or_default() {
        let text = match value {
            serde_yaml::Value::String(s) => s,
            serde_yaml::Value::Number(n) => n.to_string(),
            serde_yaml::Value::Bool(b) => b.to_string(),
            _ => {
                p.push(
                    &path.field("params").key(&name),
                    "must be a string, a number or a boolean",
                );
                ok = false;
                continue;
            }
        };
        params.push((name, text));
    }
    ok.then_some(params)
}

fn builtin_list(builtins: &[&str]) -> String {
    builtins
        .iter()
        .map(|n| format!("builtin:{n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An HTTP token (RFC 9110 §5.6.2), as header and cookie names are.
fn http_token(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}
