//! `builtin:ring-hash`: consistent hashing on a ring (ketama). Each backend places
//! `points_per_weight × weight` points on a 64-bit ring; a request goes to the first point at
//! or after its `hash-key`. Later attempts walk on to the next distinct backend on the ring,
//! so a retry stays as consistent as the first choice.
//!
//! Parameters: `points_per_weight` (1 to 1000, default 100).

use gantry_plugin_sdk::{backend_key, export_balancer, Backend, Balancer, Params, Request};
use xxhash_rust::xxh3::xxh3_64;

struct RingHash {
    points_per_weight: u32,
    /// (point, backend id), sorted by point.
    ring: Vec<(u64, u32)>,
}

impl Balancer for RingHash {
    fn configure(params: &Params) -> Result<Self, String> {
        params.reject_unknown(&["points_per_weight"])?;
        let points_per_weight: u32 = params.parse_or("points_per_weight", 100)?;
        if !(1..=1000).contains(&points_per_weight) {
            return Err(format!(
                "parameter `points_per_weight`: {points_per_weight} is out of range 1..=1000"
            ));
        }
        Ok(RingHash {
            points_per_weight,
            ring: Vec::new(),
        })
    }

    fn set_backends(&mut self, backends: Vec<Backend>) {
        self.ring.clear();
        for backend in backends.iter().filter(|b| b.weight > 0) {
            let key = backend_key(backend);
            for i in 0..self.points_per_weight * backend.weight {
                let point = xxh3_64(format!("{key}-{i}").as_bytes());
                self.ring.push((point, backend.id));
            }
        }
        self.ring.sort_unstable();
    }

    fn pick(&mut self, request: &Request, attempt: u32) -> Option<u32> {
        if self.ring.is_empty() {
            return None;
        }
        let start = self
            .ring
            .partition_point(|(point, _)| *point < request.hash_key);
        let mut seen: Vec<u32> = Vec::new();
        for step in 0..self.ring.len() {
            let (_, id) = self.ring[(start + step) % self.ring.len()];
            if !seen.contains(&id) {
                if seen.len() as u32 == attempt {
                    return Some(id);
                }
                seen.push(id);
            }
        }
        // Fewer distinct backends than attempts: start over from the first.
        seen.first().copied()
    }
}

export_balancer!(RingHash);
