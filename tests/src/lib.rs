//! Test support for isthmus: the in-memory simulation network and the test PKI.

pub mod fuzzing;
pub mod peer;
pub mod pki;
pub mod scenario;
pub mod sim;
pub mod sipworld;
