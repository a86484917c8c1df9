//! Test fixture: a balancer written against `gantry:plugins@0.1.0` directly (the SDK now
//! targets 0.3.0), as a plugin built before 0.2.0 was published would be. It rotates over the
//! backends with weight above 0 by the host's shared `sequence`; its one parameter, `offset`,
//! shifts the rotation, so a test can tell its picks from the native round-robin's.

// The bindings wit-bindgen generates for exports are `unsafe` glue; the SDK keeps them out of
// plugin crates, and this fixture goes without the SDK on purpose.
#![allow(missing_docs, unsafe_code, clippy::too_many_arguments)]

use std::cell::RefCell;

wit_bindgen::generate!({
    world: "balancer",
    path: "../../../plugins-wit/0.1.0",
});

use gantry::plugins::host;

thread_local! {
    /// (offset, ids of backends that take work): one instance serves one port in 0.1.0.
    static STATE: RefCell<(u64, Vec<u32>)> = const { RefCell::new((0, Vec::new())) };
}

struct Rotate;

impl Guest for Rotate {
    fn configure(parameters: Vec<Parameter>) -> Result<(), String> {
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
        STATE.with(|state| state.borrow_mut().0 = offset);
        Ok(())
    }

    fn set_backends(backends: Vec<Backend>) {
        let ids = backends
            .iter()
            .filter(|b| b.weight > 0)
            .map(|b| b.id)
            .collect();
        STATE.with(|state| state.borrow_mut().1 = ids);
    }

    fn pick(_request: Request, _attempt: u32) -> Option<u32> {
        STATE.with(|state| {
            let (offset, ids) = &*state.borrow();
            if ids.is_empty() {
                return None;
            }
            let turn = (host::sequence() + offset) % ids.len() as u64;
            Some(ids[turn as usize])
        })
    }
}

export!(Rotate);
