//! The host layer both runtime binaries share: everything that is not pure. For
//! now, the durable subscription store.
#![forbid(unsafe_code)]

pub mod store;
