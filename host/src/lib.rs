//! The host layer both runtime binaries share: everything that is not pure and
//! not an adapter's socket loop (configuration files, certificates, the durable
//! store, applying the core's outputs, the command line).
#![forbid(unsafe_code)]

pub mod certs;
pub mod cli;
pub mod driver;
pub mod intake;
pub mod probe;
pub mod resolve;
pub mod sendq;
pub mod signals;
pub mod store;
