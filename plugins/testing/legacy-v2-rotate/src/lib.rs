//! Test fixture: a balancer written against `gantry:plugins@0.2.0` directly (the SDK now
//! targets 0.3.0), as a plugin built before 0.3.0 was published would be: it has no pick plan,
//! so the host calls its `pick` for every request. It rotates over the backends with weight
//! above 0 by the host's shared `sequence`; its one parameter, `offset`, shifts the rotation,
//! so a test can tell its picks from the native round-robin's.

// The bindings wit-bindgen generates for exports are `unsafe` glue; the SDK keeps them out of
// plugin crates, and this fixture goes without the SDK on purpose.
#![allow(missing_docs, unsafe_code, clippy::too_many_arguments)]

use std::cell::RefCell;

wit_bindgen::generate!({
    world: "balancer",
    path: "../../../plugins-wit/0.2.0",
});

use exports::gantry::plugins::balancers::{Balancer, Guest, GuestBalancer};
use gantry::plugins::host;
use gantry::plugins::types::{Backend, Parameter, Request};

struct Plugin;

/// One port's rotation: its offset and the ids of the backends that take work.
struct Rotate {
    offset: u64,
    ids: RefCell<Vec<u32>>,
}

impl Guest for Plugin {
    type Balancer = Rotate;

    fn configure(parameters: Vec<Parameter>) -> Result<Balancer, String> {
        let mut offset = 0;
        for parameter in parameters {
            match parameter.name.as_str() {
                "offset" => {
                    offset = parameter.value.parse().map_err(|_| {
                        format!("parameter `offset`: `{}` is not a number", parameter.value)
                    })?;
                }
                other => return Err(format!("unknown parameter `{other}`")),
            }
        }
        Ok(Balancer::new(Rotate {
            offset,
            ids: RefCell::new(Vec::new()),
        }))
    }
}

impl GuestBalancer for Rotate {
    fn set_backends(&self, backends: Vec<Backend>) {
        *self.ids.borrow_mut() = backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| b.id)
            .collect();
    }

    fn pick(&self, _request: Request, _attempt: u32) -> Option<u32> {
        let ids = self.ids.borrow();
        if ids.is_empty() {
            return None;
        }
        let turn = (host::sequence() + self.offset) % ids.len() as u64;
        Some(ids[turn as usize])
    }
}

export!(Plugin);
