//! Test configurations, built the way tests describe them instead of as YAML prologues: ports
//! of services on 127.0.0.1 bound to ephemeral ports, the plugins they name, and whatever
//! top-level sections a test needs. The admin listener always goes to an ephemeral port.
//!
//! ```ignore
//! let gantry = Scenario::new()
//!     .port("web", Port::http("http").backends(&[a.addr, b.addr]).set("retries", "0"))
//!     .start()
//!     .await;
//! ```

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

use gantry::Gantry;
use lb_config::Model;

/// One port: its fields in the order given, written as a YAML flow map.
#[derive(Clone, Debug)]
pub struct Port {
    fields: Vec<(String, String)>,
}

impl Port {
    /// A port named `name` speaking `protocol`, on an ephemeral port.
    pub fn new(name: &str, protocol: &str) -> Port {
        Port {
            fields: vec![
                ("name".into(), name.into()),
                ("port".into(), "0".into()),
                ("protocol".into(), protocol.into()),
            ],
        }
    }

    /// An `http` port.
    pub fn http(name: &str) -> Port {
        Port::new(name, "http")
    }

    /// A `tcp` port.
    pub fn tcp(name: &str) -> Port {
        Port::new(name, "tcp")
    }

    /// These backends, weight 1 each.
    pub fn backends(self, backends: &[SocketAddr]) -> Port {
        let list: Vec<String> = backends.iter().map(|b| format!("\"{b}\"")).collect();
        self.set("backends", &format!("[{}]", list.join(", ")))
    }

    /// Sets `key` to a YAML value (`"{ policy: \"builtin:maglev\" }"`, `"0"`), replacing an
    /// earlier value of the key.
    pub fn set(mut self, key: &str, yaml: &str) -> Port {
        match self.fields.iter_mut().find(|(k, _)| k == key) {
            Some((_, value)) => *value = yaml.to_owned(),
            None => self.fields.push((key.to_owned(), yaml.to_owned())),
        }
        self
    }

    fn yaml(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|(key, value)| format!("{key}: {value}"))
            .collect();
        format!("{{ {} }}", fields.join(", "))
    }
}

/// A whole test configuration.
#[derive(Clone, Debug, Default)]
pub struct Scenario {
    admin: Vec<String>,
    sections: Vec<String>,
    plugins: Vec<(String, String)>,
    services: Vec<(String, Vec<Port>)>,
}

impl Scenario {
    /// Nothing but the admin listener.
    pub fn new() -> Scenario {
        Scenario::default()
    }

    /// A field of `admin:` besides its ephemeral `listen`, as YAML (`token_file: "/t"`).
    pub fn admin(mut self, field: &str) -> Scenario {
        self.admin.push(field.to_owned());
        self
    }

    /// A top-level section, as YAML on one line (`runtime: { shutdown_grace: 5s }`).
    pub fn section(mut self, yaml: &str) -> Scenario {
        self.sections.push(yaml.to_owned());
        self
    }

    /// A plugin file, under `plugins:` as `name`.
    pub fn plugin(mut self, name: &str, file: &Path) -> Scenario {
        self.plugins.push((
            name.to_owned(),
            format!("{{ file: \"{}\" }}", file.display()),
        ));
        self
    }

    /// `port` on service `service` (on 127.0.0.1; created on first use).
    pub fn port(mut self, service: &str, port: Port) -> Scenario {
        match self.services.iter_mut().find(|(name, _)| name == service) {
            Some((_, ports)) => ports.push(port),
            None => self.services.push((service.to_owned(), vec![port])),
        }
        self
    }

    /// The configuration file's text.
    pub fn yaml(&self) -> String {
        let mut out = String::from("admin: { listen: \"127.0.0.1:0\"");
        for field in &self.admin {
            let _ = write!(out, ", {field}");
        }
        out.push_str(" }\n");
        for section in &self.sections {
            let _ = writeln!(out, "{section}");
        }
        if !self.plugins.is_empty() {
            out.push_str("plugins:\n");
            for (name, entry) in &self.plugins {
                let _ = writeln!(out, "  {name}: {entry}");
            }
        }
        if !self.services.is_empty() {
            out.push_str("services:\n");
        }
        for (name, ports) in &self.services {
            let _ = writeln!(out, "  - name: {name}\n    address: 127.0.0.1\n    ports:");
            for port in ports {
                let _ = writeln!(out, "      - {}", port.yaml());
            }
        }
        out
    }

    /// The model, as the file loader makes it (absolute file names only).
    pub fn model(&self) -> Model {
        super::model(&self.yaml())
    }

    /// Port `web/http` to `origin`, nothing else.
    pub fn web(origin: SocketAddr) -> Scenario {
        Scenario::new().port("web", Port::http("http").backends(&[origin]))
    }

    /// Gantry serving this configuration.
    pub async fn start(&self) -> Gantry {
        Gantry::start(self.model()).await.expect("gantry starts")
    }

    /// Writes the configuration to `path`, for tests of the file source.
    pub fn write(&self, path: &Path) {
        std::fs::write(path, self.yaml()).expect("write config");
    }
}
