//! rewind's promises under power cuts and injected I/O errors.
//!
//! Random host workloads run through the live volume (primary + vault) on the memory
//! storage backend, which knows what is durable ([`rewind_storage::SimStorage`]), and are
//! checked against a reference model ([`model`]):
//! - [`power_cut`]: the power is cut at a random storage operation; recovery runs as
//!   `rewind serve`'s does; every promise is checked.
//! - [`fault`]: every storage operation of a fixed workload fails in turn (EIO, ENOSPC,
//!   once or from then on); the host sees a fitting error, nothing wrong is read, and the
//!   volume goes on or a restart recovers it.
//!
//! The test suite runs a few hundred cuts (`tests/`); `bench/src/bin/power_cuts.rs` runs as
//! many as asked for.

pub mod fault;
pub mod model;
pub mod power_cut;
pub mod workload;
