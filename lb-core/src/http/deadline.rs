//! A connection's reusable timer. Each request on a kept-alive connection needs a deadline
//! (the wait for the next head, the backend's time to answer); a fresh tokio timer per request
//! costs a timer-wheel insertion and removal and a clock read each time. One timer per
//! connection and purpose, moved to the next deadline instead, costs a store when the new
//! deadline is later than the last (tokio re-files an extended timer only when its old
//! deadline comes), which it is for every request after the first.

use std::pin::Pin;

use tokio::time::{sleep_until, Instant, Sleep};

/// A timer made on first use and moved afterwards.
#[derive(Default)]
pub struct Deadline(Option<Pin<Box<Sleep>>>);

impl Deadline {
    /// The timer, set to fire at `at`: await it for the deadline.
    pub fn at(&mut self, at: Instant) -> Pin<&mut Sleep> {
        if let Some(sleep) = &mut self.0 {
            sleep.as_mut().reset(at);
        }
        self.0
            .get_or_insert_with(|| Box::pin(sleep_until(at)))
            .as_mut()
    }
}
