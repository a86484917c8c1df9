//! Test fixture for Gantry's sandbox: a balancer that misbehaves on every `pick` as its
//! `mode` parameter says, so tests can prove each fault is contained.
//!
//! Modes: `good` (first backend), `trap` (panics), `loop` (never returns), `grow` (allocates
//! without end), `invalid` (answers an id that does not exist), `reject` (refuses its
//! parameters in `configure`), `trap_on_backends` (accepts its parameters, then panics when
//! given a backend set), `spin` (works for `spin_us` microseconds of the host's monotonic
//! clock, then answers the first backend), `host_flood` (calls the host without end: logs,
//! header lookups, figures), `giant_strings` (hands the host a 4 MiB log line and a 4 MiB
//! header name on every pick, then answers the first backend). In every mode, `hoard_mib`
//! makes the policy keep that many MiB from the moment it is given its backends (a large
//! table), and `plan` says what it answers when asked for its pick plan: `none` (the default),
//! `last` (a rotation over its last backend alone, unlike its picks, so a test can tell which
//! one placed a request), `invalid` (a rotation naming a backend that does not exist) or
//! `trap` (panics).

use gantry_plugin_sdk::{export_balancer, host, Backend, Balancer, Params, PickPlan, Request};

/// What `plan` answers.
enum Plan {
    None,
    Last,
    Invalid,
    Trap,
}

enum Mode {
    Good,
    Trap,
    Loop,
    Grow,
    Invalid,
    TrapOnBackends,
    Spin(u64),
    HostFlood,
    GiantStrings,
}

struct Misbehave {
    mode: Mode,
    plan: Plan,
    last: Option<u32>,
    hoard_mib: usize,
    first: Option<u32>,
    hoard: Vec<Vec<u8>>,
    giant: String,
}

impl Balancer for Misbehave {
    fn configure(params: &Params) -> Result<Self, String> {
        let mode = match params.get("mode").unwrap_or("good") {
            "good" => Mode::Good,
            "trap" => Mode::Trap,
            "loop" => Mode::Loop,
            "grow" => Mode::Grow,
            "invalid" => Mode::Invalid,
            "trap_on_backends" => Mode::TrapOnBackends,
            "spin" => Mode::Spin(params.parse_or("spin_us", 1000)?),
            "host_flood" => Mode::HostFlood,
            "giant_strings" => Mode::GiantStrings,
            "reject" => return Err("mode `reject` refuses every configuration".into()),
            other => return Err(format!("unknown mode `{other}`")),
        };
        let plan = match params.get("plan").unwrap_or("none") {
            "none" => Plan::None,
            "last" => Plan::Last,
            "invalid" => Plan::Invalid,
            "trap" => Plan::Trap,
            other => return Err(format!("unknown plan `{other}`")),
        };
        Ok(Misbehave {
            mode,
            plan,
            last: None,
            hoard_mib: params.parse_or("hoard_mib", 0)?,
            first: None,
            hoard: Vec::new(),
            giant: String::new(),
        })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        if matches!(self.mode, Mode::TrapOnBackends) {
            panic!("misbehave: trapping on a backend set as asked");
        }
        self.first = backends.first().map(|b| b.id);
        self.last = backends.last().map(|b| b.id);
        if matches!(self.mode, Mode::GiantStrings) && self.giant.is_empty() {
            self.giant = "g".repeat(4 << 20);
        }
        if self.hoard_mib > 0 {
            // Written, so the memory is really taken.
            self.hoard.push(vec![1; self.hoard_mib << 20]);
        }
    }

    fn pick(&mut self, request: &Request, _attempt: u32) -> Option<u32> {
        match self.mode {
            Mode::Good | Mode::TrapOnBackends => self.first,
            Mode::Spin(micros) => {
                let until = host::monotonic_now() + micros * 1000;
                let mut spin = request.hash_key;
                while host::monotonic_now() < until {
                    spin = spin.wrapping_mul(6364136223846793005).wrapping_add(1);
                }
                std::hint::black_box(spin);
                self.first
            }
            Mode::Trap => panic!("misbehave: trapping as asked"),
            Mode::Loop => {
                let mut spin = request.hash_key;
                loop {
                    spin = spin.wrapping_mul(6364136223846793005).wrapping_add(1);
                    if spin == 0 && request.client_port == 0 {
                        return Some(0);
                    }
                }
            }
            // Reserving without writing reaches the memory cap at once, not after the deadline.
            Mode::Grow => loop {
                self.hoard.push(Vec::with_capacity(1 << 20));
            },
            Mode::Invalid => Some(9_999),
            Mode::HostFlood => loop {
                host::log(host::Level::Info, "misbehave: flooding the host");
                let _ = host::request_header("x-flood");
                let _ = host::backend_figures(0);
            },
            Mode::GiantStrings => {
                host::log(host::Level::Info, &self.giant);
                let _ = host::request_header(&self.giant);
                self.first
            }
        }
    }

    fn plan(&self) -> Option<PickPlan> {
        match self.plan {
            Plan::None => None,
            Plan::Last => self.last.map(|id| PickPlan::Rotation(vec![id])),
            Plan::Invalid => Some(PickPlan::Rotation(vec![9_999])),
            Plan::Trap => panic!("misbehave: trapping in plan as asked"),
        }
    }
}

export_balancer!(Misbehave);
