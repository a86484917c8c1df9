//! The fuzz targets' checked-in corpora (`fuzz/corpus/TARGET/`), replayed through the same
//! entry points the libFuzzer binaries call (`fuzzing` in `lb-core`, `lb-config` and
//! `lb-k8s`, each in the crate it tests): every seed and every input
//! a fuzzing run found worth keeping (crashes included, once fixed) stays a regression test.

use std::path::PathBuf;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target);
    let inputs: Vec<_> = std::fs::read_dir(&folder)
        .unwrap_or_else(|e| panic!("{}: {e}", folder.display()))
        .map(|entry| {
            let path = entry.expect("corpus entry").path();
            let bytes = std::fs::read(&path).expect("corpus file");
            (path, bytes)
        })
        .collect();
    assert!(!inputs.is_empty(), "{} has inputs", folder.display());
    inputs
}

fn replay(target: &str, run: fn(&[u8])) {
    for (path, bytes) in corpus(target) {
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{} broke a property", path.display());
    }
}

#[test]
fn http_request_corpus() {
    replay("http_request", lb_core::fuzzing::http_request);
}

#[test]
fn chunked_body_corpus() {
    replay("chunked_body", lb_core::fuzzing::chunked_body);
}

#[test]
fn proxy_protocol_corpus() {
    replay("proxy_protocol", lb_core::fuzzing::proxy_protocol);
}

#[test]
fn config_corpus() {
    replay("config", lb_config::fuzzing::config);
}

#[test]
fn kubernetes_service_corpus() {
    replay("kubernetes_service", lb_k8s::fuzzing::kubernetes_service);
}

#[test]
fn plugin_answers_corpus() {
    replay("plugin_answers", lb_core::fuzzing::plugin_answers);
}
