//! A balancer's pick plan (`gantry:plugins@0.3.0`): a list of backend ids and the rule that
//! indexes it, stated by the plugin once per backend set and evaluated here, natively, for
//! each first pick. A plugin whose whole first-pick decision is "the next in a rotation",
//! "a table indexed by the request's hash key" or "a random entry" (round-robin, Maglev,
//! weighted random) so costs no plugin call per request; later attempts still call `pick`.

use std::cell::Cell;
use std::sync::Arc;

use super::host::{random_seed, xorshift, CallContext};

/// The most ids a plan may hold: a Maglev table for thousands of backends fits many times
/// over; a plan beyond it is refused as an invalid answer (4 MiB per backend set).
pub(crate) const MAX_PLAN_IDS: usize = 1 << 20;

/// How a plan's list is indexed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Rule {
    /// By the policy's shared sequence (`host.sequence`).
    Rotation,
    /// By the request's hash key.
    ByHash,
    /// By fresh random bits.
    ByRandom,
}

/// A plan the host checked: never empty, every id in the set; with the policy's call context,
/// whose shared sequence a rotation advances (the counter `host.sequence` answers from).
pub(crate) struct PickPlan {
    rule: Rule,
    ids: Box<[u32]>,
    context: Arc<CallContext>,
}

impl PickPlan {
    /// The plan, if it can be used over a set of `count` backends; `None` for an empty one,
    /// one longer than [`MAX_PLAN_IDS`], or one naming an id outside the set.
    pub(crate) fn checked(
        rule: Rule,
        ids: Vec<u32>,
        count: usize,
        context: Arc<CallContext>,
    ) -> Option<PickPlan> {
        let valid = !ids.is_empty()
            && ids.len() <= MAX_PLAN_IDS
            && ids.iter().all(|id| (*id as usize) < count);
        valid.then(|| PickPlan {
            rule,
            ids: ids.into_boxed_slice(),
            context,
        })
    }

    /// How many ids it lists.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// The backend index for a first pick with `hash_key`. Only a rotation moves the shared
    /// sequence.
    pub(crate) fn pick(&self, hash_key: u64) -> usize {
        let draw = match self.rule {
            Rule::Rotation => self.context.next_in_sequence(),
            Rule::ByHash => hash_key,
            Rule::ByRandom => thread_random(),
        };
        // `ids` is non-empty and at most 2^20 long, so both casts are exact.
        self.ids[(draw % self.ids.len() as u64) as usize] as usize
    }
}

/// 64 random bits from this thread's generator.
fn thread_random() -> u64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(random_seed());
    }
    STATE.with(|state| {
        let mut bits = state.get();
        let drawn = xorshift(&mut bits);
        state.set(bits);
        drawn
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rule: Rule, ids: Vec<u32>, count: usize) -> Option<PickPlan> {
        PickPlan::checked(rule, ids, count, CallContext::empty())
    }

    #[test]
    fn a_plan_is_refused_when_empty_too_long_or_naming_an_id_outside_the_set() {
        assert!(plan(Rule::Rotation, vec![], 3).is_none());
        assert!(plan(Rule::Rotation, vec![0, 3], 3).is_none());
        assert!(plan(Rule::ByHash, vec![0; MAX_PLAN_IDS + 1], 3).is_none());
        assert!(plan(Rule::ByHash, vec![0; MAX_PLAN_IDS], 1).is_some());
        assert!(plan(Rule::Rotation, vec![2, 0, 1], 3).is_some());
    }

    #[test]
    fn a_rotation_follows_the_shared_sequence_and_a_table_the_hash_key() {
        let context = CallContext::empty();
        let rotation =
            PickPlan::checked(Rule::Rotation, vec![2, 0, 0, 1], 3, context.clone()).expect("valid");
        let picks: Vec<usize> = (0..8).map(|_| rotation.pick(0)).collect();
        assert_eq!(picks, [2, 0, 0, 1, 2, 0, 0, 1]);
        // The plugin's own `host.sequence` continues where the plan left off.
        assert_eq!(context.next_in_sequence(), 8);
        let table =
            PickPlan::checked(Rule::ByHash, vec![1, 2, 0], 3, context.clone()).expect("valid");
        assert_eq!(table.pick(7), 2);
        // 2^64 - 1 is a multiple of 3: the first entry.
        assert_eq!(table.pick(u64::MAX), 1);
        assert_eq!(
            context.next_in_sequence(),
            9,
            "a table does not move the sequence"
        );
    }

    #[test]
    fn random_draws_cover_every_entry_by_its_repetitions() {
        let plan = plan(Rule::ByRandom, vec![0, 0, 0, 1], 2).expect("valid");
        let mut counts = [0u32; 2];
        for _ in 0..4000 {
            counts[plan.pick(0)] += 1;
        }
        // 3:1 by repetition; the bounds are loose, so only a broken generator fails them.
        assert!(counts[0] > 2500 && counts[1] > 600, "{counts:?}");
    }
}
