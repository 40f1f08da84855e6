//! sans-IO core shared by every Portico tier: session tokens, the browser wire protocol and secret wrappers.
//!
//! Nothing here performs I/O, reads the clock or draws randomness: time and keys are passed in by the caller.

pub mod codes;
pub mod control;
pub mod files;
pub mod limits;
pub mod metrics;
pub mod proxy;
pub mod recording;
pub mod rfb;
pub mod secret;
pub mod token;
pub mod wire;

#[cfg(test)]
mod generated;
#[cfg(test)]
mod wire_vectors;

pub use secret::Secret;
