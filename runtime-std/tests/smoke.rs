//! The binary as an admin runs it (cases shared by both runtimes).

const BIN: &str = env!("CARGO_BIN_EXE_isthmus-std");

include!("../../tests/runtime/smoke_cases.rs");
