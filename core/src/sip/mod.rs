//! SIP (RFC 3261) for the gateway's SIP side: the message codec with stream framing,
//! URIs and name-addrs, and PIDF presence documents (RFC 3863).

pub mod message;
pub mod pidf;
pub mod transaction;
pub mod uri;

pub use message::{reason_phrase, SipError, SipLimits, SipMessage, StartLine, StreamDecoder};
pub use uri::{NameAddr, NameAddrRef, Param, SipUri, SipUriRef, Via};
