//! Benchmark reference, not part of Gantry: pingora's own `Server` running the smallest
//! possible `ProxyHttp` (one fixed backend, nothing else). `bench/compare.sh` runs it beside
//! Gantry and HAProxy so the report separates what pingora's HTTP path costs from what Gantry
//! adds on top of it.
//!
//!     cargo run --release --example pingora_baseline -- LISTEN_ADDR BACKEND_ADDR

use std::sync::Arc;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::proxy::{ProxyHttp, Session};

struct FixedBackend(String);

#[async_trait]
impl ProxyHttp for FixedBackend {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.0.as_str(),
            false,
            String::new(),
        )))
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, backend] = &args[..] else {
        eprintln!("usage: pingora_baseline LISTEN_ADDR BACKEND_ADDR");
        std::process::exit(2);
    };
    let mut server = Server::new(None).expect("pingora server");
    // One worker thread, like Gantry's `runtime.workers: 1` and HAProxy's `nbthread 1`.
    if let Some(conf) = Arc::get_mut(&mut server.configuration) {
        conf.threads = 1;
    }
    server.bootstrap();
    let mut service =
        pingora::proxy::http_proxy_service(&server.configuration, FixedBackend(backend.clone()));
    service.add_tcp(listen);
    server.add_service(service);
    server.run_forever();
}
