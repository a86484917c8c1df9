//! Captures `gantry::access` events process-wide, so a test can see what the access log said
//! about its own service (tests run in parallel; each looks only at its service's lines).

use std::fmt::Write as _;
use std::sync::{Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

static LINES: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct Capture;

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={:?}", field.name(), value);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        let _ = write!(self.0, " {}={}", field.name(), value);
    }
}

impl<S: tracing::Subscriber> Layer<S> for Capture {
    fn on_event(&self, event: &tracing::Event<'_>, _cx: Context<'_, S>) {
        if event.metadata().target() == "gantry::access" {
            let mut fields = Fields(String::new());
            event.record(&mut fields);
            LINES.lock().expect("lock").push(fields.0);
        }
    }
}

/// Starts capturing (once per process).
pub fn capture() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let subscriber = tracing_subscriber::registry().with(Capture);
        let _ = tracing::subscriber::set_global_default(subscriber);
    });
}

/// Access log lines captured so far for `service`.
pub fn lines_for(service: &str) -> Vec<String> {
    let needle = format!(" service={service} ");
    LINES
        .lock()
        .expect("lock")
        .iter()
        .filter(|line| line.contains(&needle))
        .cloned()
        .collect()
}
