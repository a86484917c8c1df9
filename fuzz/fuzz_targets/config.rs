//! libFuzzer target: `lb_config::fuzzing::config` (see that module for the properties checked).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lb_config::fuzzing::config(data));
