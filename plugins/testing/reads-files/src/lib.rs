//! Test fixture: reading a file makes this component import `wasi:filesystem`, which the
//! Gantry sandbox does not offer; loading it must fail with a message naming the import.

use gantry_plugin_sdk::{export_balancer, Backend, Balancer, Params, Request};

struct ReadsFiles;

impl Balancer for ReadsFiles {
    fn configure(_params: &Params) -> Result<Self, String> {
        Ok(ReadsFiles)
    }

    fn set_backends(&mut self, _backends: Vec<Backend>) {}

    fn pick(&mut self, _request: &Request, _attempt: u32) -> Option<u32> {
        std::fs::read("/etc/hostname")
            .ok()
            .map(|bytes| bytes.len() as u32)
    }
}

export_balancer!(ReadsFiles);
