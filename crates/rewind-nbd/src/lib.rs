//! The NBD protocol, newstyle fixed, as specified in the NBD project's `doc/proto.md`.
//!
//! - [`proto`]: the protocol's numbers.
//! - [`negotiate`]: option haggling as a state machine: bytes in, replies out, no I/O.
//! - [`transmission`]: request headers and replies (simple and structured).
//! - [`server`]: serving connections with blocking I/O on threads; exports plug in
//!   through the [`Export`] and [`Exports`] traits.
//! - [`capacity`]: what clients may use of the server (connections, threads, memory).

pub mod capacity;
pub mod negotiate;
pub mod proto;
mod replies;
pub mod server;
pub mod transmission;
mod workers;

pub use capacity::{Bounds, Capacity};
pub use server::{
    refuse_connection, serve_connection, serve_connection_within, Export, ExportError, Exports,
    ServerStats,
};
pub use workers::{connection_memory_bound, PAYLOAD_ALIGN, PAYLOAD_ALIGN_MIN};
