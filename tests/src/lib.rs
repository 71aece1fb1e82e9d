//! Test support: the in-memory simulation network.
