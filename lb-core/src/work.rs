//! A connection's work from some point on (the rest of a protocol's serving), made on the heap
//! by a plain function rather than inside an `async fn`: a future made inside an `async fn`
//! keeps room in that function's own state for every callee future it built, even once moved
//! into a box, so a connection's task would be as large as the largest protocol's state (7 KB,
//! where it waits for a first byte with a few hundred). Made by a plain function, the task
//! holds one pointer. The connection driver and the HTTP listeners both hand work on this way.

use std::future::Future;
use std::pin::Pin;

/// A connection's work from some point on.
pub(crate) type Work<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;
