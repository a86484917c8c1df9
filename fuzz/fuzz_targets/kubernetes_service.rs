//! libFuzzer target: `lb_core::fuzzing::kubernetes_service` (see that module for the
//! properties checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_core::fuzzing::kubernetes_service(data));
