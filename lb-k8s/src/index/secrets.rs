//! The TLS Secrets Services name (`gantry.io/tls-secret`): a `kubernetes.io/tls` Secret's
//! certificate chain and key, as PEM, or why it cannot be used.

use k8s_openapi::api::core::v1::Secret;

/// The Secret type that carries a certificate and its key.
pub const TLS_TYPE: &str = "kubernetes.io/tls";

/// A usable TLS Secret's material.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretView {
    /// `tls.crt`: the chain, leaf first.
    pub cert: Vec<u8>,
    /// `tls.key`: the private key.
    pub key: Vec<u8>,
}

/// Reads `secret`: its material, or why it is no TLS Secret.
pub fn read(secret: &Secret) -> Result<SecretView, String> {
    let type_ = secret.type_.as_deref().unwrap_or("Opaque");
    if type_ != TLS_TYPE {
        return Err(format!("is of type `{type_}`, not `{TLS_TYPE}`"));
    }
    let data = secret.data.as_ref();
    let field = |name: &str| {
        data.and_then(|d| d.get(name))
            .map(|bytes| bytes.0.clone())
            .filter(|bytes| !bytes.is_empty())
            .ok_or_else(|| format!("has no `{name}`"))
    };
    Ok(SecretView {
        cert: field("tls.crt")?,
        key: field("tls.key")?,
    })
}
