//! isthmus-core: the sans-IO engine of the isthmus XMPP federation gateway.
//!
//! Every protocol decision lives here. The core owns no sockets, threads, clock,
//! randomness or files: time and a seed come in, byte transmits and other outputs
//! come out.
#![forbid(unsafe_code)]

mod bytes;
pub mod config;
pub mod dns;
pub mod gateway;
pub mod jid;
pub mod policy;
pub mod rng;
pub mod roster;
pub mod s2s;
pub mod sip;
pub mod translate;
pub mod xml;
