//! A port's `tls:` section: reading and checking each certificate's PEM chain and private key
//! (from files, or from data another source holds), that they belong together, and the server
//! names the certificate answers. Problems are reported against the field that named the
//! material, so `gantry check` points at the line to fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

use crate::file::{PemMaterial, TlsFile};
use crate::lenient::Lenient;
use crate::model::{Certificate, CertificateSource, Protocol, TlsSettings};
use crate::problems::{FieldPath, Problems};

use super::take;

/// What became of a port's `tls:` section.
pub(super) enum TlsOutcome {
    /// The port does not terminate TLS and has no section.
    NotWanted,
    /// Every certificate loaded.
    Loaded(Arc<TlsSettings>),
    /// Something is wrong (reported).
    Failed,
}

pub(super) fn build_tls(
    file: Option<Lenient<TlsFile>>,
    protocol: Protocol,
    base_dir: &Path,
    path: &FieldPath,
    p: &mut Problems,
) -> TlsOutcome {
    match (&file, protocol.terminates_tls()) {
        (None, false) => return TlsOutcome::NotWanted,
        (None, true) => {
            p.push(
                path,
                format!(
                    "required for {} ports: list certificates",
                    protocol.as_str()
                ),
            );
            return TlsOutcome::Failed;
        }
        (Some(_), false) => {
            p.push(
                path,
                format!(
                    "only for tls and https ports (this port is {}; use protocol: tls to terminate TLS, or tcp to pass it through)",
                    protocol.as_str()
                ),
            );
            return TlsOutcome::Failed;
        }
        (Some(_), true) => {}
    }
    let Some(file) = take(file, path, p) else {
        return TlsOutcome::Failed;
    };
    let certs_path = path.field("certificates");
    if file.certificates.is_empty() {
        p.push(&certs_path, "at least one certificate is required");
        return TlsOutcome::Failed;
    }
    let mut certificates = Vec::new();
    let mut ok = true;
    for (i, item) in file.certificates.into_iter().enumerate() {
        let item_path = certs_path.index(i);
        let Some(item) = take(Some(item), &item_path, p) else {
            ok = false;
            continue;
        };
        let Some(material) = material(item.cert, item.key, item.pem, base_dir, &item_path, p)
        else {
            ok = false;
            continue;
        };
        // Written names replace the certificate's own; invalid ones fail the item, but the
        // material is still checked so every problem is reported at once.
        let names = item
            .names
            .as_deref()
            .map(|names| checked_names(names, &item_path.field("names"), p));
        let names_ok = !matches!(names, Some(None));
        match load_certificate(material, names.flatten(), &item_path, p) {
            Some(certificate) if names_ok => certificates.push(certificate),
            _ => ok = false,
        }
    }
    if ok {
        TlsOutcome::Loaded(Arc::new(TlsSettings { certificates }))
    } else {
        TlsOutcome::Failed
    }
}

/// Where one certificate's chain and key come from, with paths already resolved.
enum Material {
    Files { cert: PathBuf, key: PathBuf },
    Pem(PemMaterial),
}

/// The material a `certificates[i]` item names: two files, or PEM data, not both.
fn material(
    cert: Option<String>,
    key: Option<String>,
    pem: Option<PemMaterial>,
    base_dir: &Path,
    path: &FieldPath,
    p: &mut Problems,
) -> Option<Material> {
    match (cert, key, pem) {
        (None, None, Some(pem)) => Some(Material::Pem(pem)),
        (Some(_), _, Some(_)) | (_, Some(_), Some(_)) => {
            p.push(path, "give either cert and key files or PEM data, not both");
            None
        }
        (cert, key, None) => {
            if cert.is_none() {
                p.push(&path.field("cert"), "required");
            }
            if key.is_none() {
                p.push(&path.field("key"), "required");
            }
            Some(Material::Files {
                cert: base_dir.join(cert?),
                key: base_dir.join(key?),
            })
        }
    }
}

/// Loads and checks one certificate; every problem found goes to `problems` under `path`.
/// Without `names`, it answers the names in the certificate's subjectAltName.
fn load_certificate(
    material: Material,
    names: Option<Vec<String>>,
    path: &FieldPath,
    problems: &mut Problems,
) -> Option<Certificate> {
    let (cert_bytes, key_bytes, cert_label, key_label, source) = match material {
        Material::Files { cert, key } => {
            let cert_bytes = read_file(&cert, &path.field("cert"), problems);
            let key_bytes = read_file(&key, &path.field("key"), problems);
            let labels = (cert.display().to_string(), key.display().to_string());
            let source = CertificateSource::File { cert, key };
            (cert_bytes, key_bytes, labels.0, labels.1, source)
        }
        Material::Pem(pem) => {
            let labels = (
                format!("the certificate of {}", pem.from),
                format!("the key of {}", pem.from),
            );
            let source = CertificateSource::Inline { from: pem.from };
            (Some(pem.cert), Some(pem.key), labels.0, labels.1, source)
        }
    };
    let chain = cert_bytes.and_then(|b| read_chain(&b, &cert_label, &path.field("cert"), problems));
    let key = key_bytes.and_then(|b| read_key(&b, &key_label, &path.field("key"), problems));
    let (chain, key) = (chain?, key?);

    let signing_key = match rustls::crypto::ring::sign::any_supported_type(&key) {
        Ok(signing_key) => signing_key,
        Err(err) => {
            problems.push(
                &path.field("key"),
                format!("unsupported private key in {key_label}: {err}"),
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
            format!("private key {key_label} does not match certificate {cert_label}"),
        );
        return None;
    }
    let names = match names {
        Some(names) => names,
        None => names_from_certificate(&chain[0], &cert_label, path, problems)?,
    };

    let mut digest = Sha256::new();
    for cert in &chain {
        digest.update(cert.as_ref());
    }
    digest.update(key.secret_der());
    Some(Certificate {
        names,
        source,
        sha256: hex(&Sha256::digest(chain[0].as_ref())),
        material_digest: digest.finalize().into(),
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
    bytes: &[u8],
    label: &str,
    path: &FieldPath,
    problems: &mut Problems,
) -> Option<Vec<CertificateDer<'static>>> {
    let chain: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(bytes).collect();
    match chain {
        Ok(chain) if !chain.is_empty() => {
            if let Err(err) = webpki::EndEntityCert::try_from(&chain[0]) {
                problems.push(
                    path,
                    format!("{label}: not a valid X.509 certificate: {err}"),
                );
                return None;
            }
            Some(chain)
        }
        Ok(_) => {
            problems.push(path, format!("{label}: no CERTIFICATE block in PEM data"));
            None
        }
        Err(err) => {
            problems.push(path, format!("{label}: invalid PEM: {err}"));
            None
        }
    }
}

fn read_key(
    bytes: &[u8],
    label: &str,
    path: &FieldPath,
    problems: &mut Problems,
) -> Option<PrivateKeyDer<'static>> {
    match PrivateKeyDer::from_pem_slice(bytes) {
        Ok(key) => Some(key),
        Err(rustls_pki_types::pem::Error::NoItemsFound) => {
            problems.push(
                path,
                format!(
                    "{label}: no private key in PEM data (expected PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)"
                ),
            );
            None
        }
        Err(err) => {
            problems.push(path, format!("{label}: invalid PEM: {err}"));
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
    label: &str,
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
                "{label} has no DNS names in subjectAltName: add `names:` to say which server names it answers"
            ),
        );
        return None;
    }
    Some(names)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
