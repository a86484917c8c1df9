//! libFuzzer target: `lb_k8s::fuzzing::kubernetes_service` (see that module for the
//! properties checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_k8s::fuzzing::kubernetes_service(data));
