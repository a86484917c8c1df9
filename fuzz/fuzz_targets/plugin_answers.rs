//! libFuzzer target: `lb_core::fuzzing::plugin_answers` (see that module for the properties
//! checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_core::fuzzing::plugin_answers(data));
