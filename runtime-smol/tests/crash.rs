//! The gateway killed mid-traffic keeps its subscription state (cases shared by
//! both runtimes).

const BIN: &str = env!("CARGO_BIN_EXE_isthmus-smol");

include!("../../tests/runtime/crash_cases.rs");
