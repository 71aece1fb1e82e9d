//! The XMPP server-to-server protocol pieces: the connection (stream) state,
//! STARTTLS, SASL EXTERNAL, Server Dialback and certificate identity.

pub mod dialback;
pub mod identity;
pub mod sasl;
pub mod stream;
pub mod tls;
