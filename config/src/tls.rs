//! Reading and checking certificate files: PEM chain, private key, that they belong together,
//! and the server names the certificate answers. Problems are reported against the field that
//! named the file, so `gantry check` points at the line to fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::model::Certificate;
use crate::problems::{FieldPath, Problems};

/// What a `certificates[i]` item names, with paths already resolved against the config's folder.
pub(crate) struct CertificateRequest {
    pub(crate) cert_path: PathBuf,
    pub(crate) key_path: PathBuf,
    pub(crate) names: Option<Vec<String>>,
}

/// Loads and checks one certificate; every problem found goes to `problems` under `path`.
pub(crate) fn load_certificate(
    request: CertificateRequest,
    path: &FieldPath,
    problems: &mut Problems,
) -> Option<Certificate> {
    let chain = read_chain(&request.cert_path, &path.field("cert"), problems);
    let key = read_key(&request.key_path, &path.field("key"), problems);
    let names = match &request.names {
        Some(names) => checked_names(names, &path.field("names"), problems),
        None => None,
    };
    let (chain, key) = (chain?, key?);

    let signing_key = match rustls::crypto::ring::sign::any_supported_type(&key) {
        Ok(signing_key) => signing_key,
        Err(err) => {
            problems.push(
                &path.field("key"),
                format!(
                    "unsupported private key in {}: {err}",
                    request.key_path.display()
                ),
            );
            return None;
        }
    };
    let certified_key = CertifiedKey::new(chain.clone(), signing_key);
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        certified_key.keys_match()
    {
        problems.push(
            &path.field("key"),
            format!(
                "private key {} does not match certificate {}",
                request.key_path.display(),
                request.cert_path.display()
            ),
        );
        return None;
    }

    let names = match names {
        Some(names) => names,
        None => names_from_certificate(&chain[0], &request.cert_path, path, problems)?,
    };

    let mut material = Sha256::new();
    for cert in &chain {
        material.update(cert.as_ref());
    }
    material.update(key.secret_der());
    Some(Certificate {
        names,
        sha256: hex(&Sha256::digest(chain[0].as_ref())),
        material_digest: material.finalize().into(),
        cert_path: request.cert_path,
        key_path: request.key_path,
        certified_key: Arc::new(certified_key),
    })
}

fn read_file(file: &Path, path: &FieldPath, problems: &mut Problems) -> Option<Vec<u8>> {
    match std::fs::read(file) {
        Ok(bytes) => Some(bytes),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            problems.push(path, format!("file not found: {}", file.display()));
            None
        }
        Err(err) => {
            problems.push(path, format!("cannot read {}: {err}", file.display()));
            None
        }
    }
}

fn read_chain(
    file: &Path,
    path: &FieldPath,
    problems: &mut Problems,
) -> Option<Vec<CertificateDer<'static>>> {
    let bytes = read_file(file, path, problems)?;
    let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(&bytes).collect();
    match chain {
        Ok(chain) if !chain.is_empty() => {
            if let Err(err) = webpki::EndEntityCert::try_from(&chain[0]) {
                problems.push(
                    path,
                    format!("{}: not a valid X.509 certificate: {err}", file.display()),
                );
                return None;
            }
            Some(chain)
        }
        Ok(_) => {
            problems.push(
                path,
                format!("{}: no CERTIFICATE block in PEM file", file.display()),
            );
            None
        }
        Err(err) => {
            problems.push(path, format!("{}: invalid PEM: {err}", file.display()));
            None
        }
    }
}

fn read_key(
    file: &Path,
    path: &FieldPath,
    problems: &mut Problems,
) -> Option<PrivateKeyDer<'static>> {
    let bytes = read_file(file, path, problems)?;
    match PrivateKeyDer::from_pem_slice(&bytes) {
        Ok(key) => Some(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            problems.push(
                path,
                format!(
                    "{}: no private key in PEM file (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
                    file.display()
                ),
            );
            None
        }
        Err(err) => {
            problems.push(path, format!("{}: invalid PEM: {err}", file.display()));
            None
        }
    }
}

/// Server names written by the operator: DNS names or `*.` wildcards, compared lowercase.
fn checked_names(
    names: &[String],
    path: &FieldPath,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    if names.is_empty() {
        problems.push(
            path,
            "must list at least one name, or be left out to use the certificate's own names",
        );
        return None;
    }
    let mut ok = true;
    for (i, name) in names.iter().enumerate() {
        if !is_server_name(name) {
            problems.push(
                &path.index(i),
                format!("`{name}` is not a DNS name or a `*.` wildcard"),
            );
            ok = false;
        }
    }
    ok.then(|| names.iter().map(|n| n.to_ascii_lowercase()).collect())
}

fn is_server_name(name: &str) -> bool {
    let exact = name.strip_prefix("*.").unwrap_or(name);
    rustls_pki_types::DnsName::try_from(exact).is_ok() && !exact.contains('*')
}

fn names_from_certificate(
    leaf: &CertificateDer<'_>,
    file: &Path,
    path: &FieldPath,
    problems: &mut Problems,
) -> Option<Vec<String>> {
    let cert = webpki::EndEntityCert::try_from(leaf).ok()?;
    let names: Vec<String> = cert
        .valid_dns_names()
        .map(|n| n.to_ascii_lowercase())
        .collect();
    if names.is_empty() {
        problems.push(
            &path.field("cert"),
            format!(
                "{} has no DNS names in subjectAltName: add `names:` to say which server names it answers",
                file.display()
            ),
        );
        return None;
    }
    Some(names)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
