//! SIP ⇄ XMPP translation (RFC 7247 addresses and errors, RFC 7572 instant
//! messages, RFC 8048 presence). Pure functions: the gateway decides when to call
//! them, the policy decides whether.

pub mod address;
pub mod error;
pub mod message;
pub mod presence;
