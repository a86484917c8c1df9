//! Generated certificates for unit tests, loaded through `lb-config` as an operator's would be.

use lb_config::TlsSettings;

/// TLS settings with one self-signed certificate per entry of `names`.
pub(crate) fn tls_settings(names: &[Vec<String>]) -> TlsSettings {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut items = String::new();
    for (i, cert_names) in names.iter().enumerate() {
        let generated = rcgen::generate_simple_self_signed(cert_names.clone()).expect("rcgen");
        let cert = dir.path().join(format!("{i}.crt"));
        let key = dir.path().join(format!("{i}.key"));
        std::fs::write(&cert, generated.cert.pem()).expect("write cert");
        std::fs::write(&key, generated.key_pair.serialize_pem()).expect("write key");
        items.push_str(&format!(
            "            - {{ cert: \"{}\", key: \"{}\" }}\n",
            cert.display(),
            key.display()
        ));
    }
    let yaml = format!(
        "services:\n  - name: s\n    ports:\n      - port: 0\n        protocol: tls\n        tls:\n          certificates:\n{items}"
    );
    let model = lb_config::parse_str(&yaml, dir.path()).expect("valid test config");
    let port = model.ports().next().expect("one port");
    (**port.tls.as_ref().expect("tls")).clone()
}
