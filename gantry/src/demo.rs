//! `gantry demo`: a few small HTTP backends on loopback and Gantry balancing across them, from
//! a configuration built the same way a file is, so a new user sees the real thing working
//! before writing any config.

use std::net::SocketAddr;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use tokio::net::TcpListener;

use crate::app::Gantry;
use lb_core::http_server::SmallServer;

/// Where the demo listens.
#[derive(Clone, Copy, Debug)]
pub struct DemoOptions {
    /// The proxy's address.
    pub listen: SocketAddr,
    /// The admin endpoint's address.
    pub admin: SocketAddr,
    /// How many backends to start.
    pub backends: usize,
}

/// A running demo.
pub struct Demo {
    /// The proxy.
    pub gantry: Gantry,
    backends: Vec<SmallServer>,
}

struct DemoBackend {
    name: String,
}

#[async_trait]
impl ServeHttp for DemoBackend {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let head = session.req_header();
        let forwarded = head
            .headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-");
        let body = format!(
            "Hello from {} ({} {}; X-Forwarded-For: {forwarded})\n",
            self.name, head.method, head.uri
        );
        let mut response = Response::new(body.into_bytes());
        let length = response.body().len();
        if let Ok(value) = length.to_string().parse() {
            response
                .headers_mut()
                .insert(http::header::CONTENT_LENGTH, value);
        }
        if let Ok(value) = "text/plain".parse() {
            response
                .headers_mut()
                .insert(http::header::CONTENT_TYPE, value);
        }
        response
    }
}

impl Demo {
    /// Starts the backends, then Gantry in front of them.
    pub async fn start(options: DemoOptions) -> anyhow::Result<Demo> {
        let mut backends = Vec::new();
        for i in 1..=options.backends.max(1) {
            let socket = TcpListener::bind("127.0.0.1:0").await?;
            let name = format!("demo backend {i} on {}", socket.local_addr()?);
            backends.push(SmallServer::start(socket, DemoBackend { name })?);
        }
        let list: Vec<String> = backends
            .iter()
            .map(|b| format!("\"{}\"", b.local_addr()))
            .collect();
        let yaml = format!(
            r#"
admin: {{ listen: "{admin}" }}
runtime: {{ access_log: true, shutdown_grace: 5s }}
services:
  - name: demo
    address: {ip}
    ports:
      - name: http
        port: {port}
        protocol: http
        backends: [{list}]
"#,
            admin = options.admin,
            ip = options.listen.ip(),
            port = options.listen.port(),
            list = list.join(", "),
        );
        let model = lb_config::parse_str(&yaml, std::path::Path::new("."))?;
        let gantry = match Gantry::start(model).await {
            Ok(gantry) => gantry,
            Err(err) => {
                for backend in backends {
                    backend.stop().await;
                }
                anyhow::bail!("{err} (choose other addresses with --listen and --admin)");
            }
        };
        Ok(Demo { gantry, backends })
    }

    /// What to tell the user.
    pub fn banner(&self) -> String {
        let proxy = self
            .gantry
            .listener_addr("demo", "http")
            .map_or_else(|| "?".into(), |a| a.to_string());
        let admin = self
            .gantry
            .admin_addr()
            .map_or_else(|| "?".into(), |a| a.to_string());
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!("http://{}/", b.local_addr()))
            .collect();
        format!(
            "Gantry demo is running.\n  proxy:    http://{proxy}/\n  backends: {}\n  metrics:  http://{admin}/metrics\n  config:   http://{admin}/config\nTry it (each answer names the backend that served it):\n  for i in 1 2 3 4 5 6; do curl -s http://{proxy}/; done\nPress Ctrl-C to stop.",
            backends.join(" ")
        )
    }

    /// Stops the backends (after the proxy has been shut down).
    pub async fn stop_backends(self) {
        for backend in self.backends {
            backend.stop().await;
        }
    }
}
