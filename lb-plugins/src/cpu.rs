//! Call deadlines that bound a plugin's own CPU work, not the scheduler's delays.
//!
//! Epoch interruption counts wall-clock ticks, so on a busy machine a call that was merely
//! descheduled would be interrupted. Reading the thread's CPU clock at every call would settle
//! it, but it is a system call (measured here: ≈ 400 ns, twice a whole plugin call), so the
//! clock is read only once a call has outlived its wall deadline: at that first expiry the
//! thread's CPU time is marked and the call goes on; at each later expiry it is interrupted
//! once it has used its whole budget of CPU *since the mark*. A call is therefore never
//! interrupted before it used `budget` of CPU (its wall deadline passing first is a
//! precondition), and never after it used more than about twice that.

use std::time::Duration;

use nix::time::{clock_gettime, ClockId};

/// What to do when a call's epoch deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Expiry {
    /// Let it run for this much longer (wall), then ask again.
    Extend(Duration),
    /// It has used its budget: interrupt it.
    Interrupt,
}

/// The rule, given the call's `budget`, the CPU time marked at its first expiry (`None` at the
/// first), and the thread's CPU time `now`. Returns the new mark with the decision.
pub(crate) fn on_expiry(
    budget: Duration,
    mark: Option<Duration>,
    now: Duration,
) -> (Option<Duration>, Expiry) {
    match mark {
        None => (Some(now), Expiry::Extend(budget)),
        Some(mark) => {
            let used = now.saturating_sub(mark);
            if used >= budget {
                (Some(mark), Expiry::Interrupt)
            } else {
                (Some(mark), Expiry::Extend(budget - used))
            }
        }
    }
}

/// CPU time this thread has used; `None` if the clock cannot be read (the caller then
/// falls back to the wall clock).
pub(crate) fn thread_time() -> Option<Duration> {
    let now = clock_gettime(ClockId::CLOCK_THREAD_CPUTIME_ID).ok()?;
    let secs = u64::try_from(now.tv_sec()).ok()?;
    let nanos = u32::try_from(now.tv_nsec()).ok()?;
    Some(Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn the_first_expiry_marks_and_extends_by_the_whole_budget() {
        assert_eq!(
            on_expiry(2 * MS, None, 100 * MS),
            (Some(100 * MS), Expiry::Extend(2 * MS))
        );
    }

    #[test]
    fn a_descheduled_call_is_extended_and_a_spinning_one_interrupted() {
        // Little CPU since the mark: the thread was waiting for a core.
        assert_eq!(
            on_expiry(2 * MS, Some(100 * MS), 100 * MS + MS / 4),
            (Some(100 * MS), Expiry::Extend(2 * MS - MS / 4))
        );
        // The whole budget since the mark: interrupt.
        assert_eq!(
            on_expiry(2 * MS, Some(100 * MS), 102 * MS),
            (Some(100 * MS), Expiry::Interrupt)
        );
    }

    #[test]
    fn the_thread_clock_advances_with_work() {
        let before = thread_time().expect("a thread CPU clock");
        // Wall time only turns a clock that never advances into a failure instead of a hang.
        let started = std::time::Instant::now();
        let mut x = 1u64;
        while thread_time().expect("clock") < before + MS {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "30 s of work never showed 1 ms on the thread's CPU clock"
            );
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}
