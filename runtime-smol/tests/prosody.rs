//! Federation with a real Prosody (cases shared by both runtimes).

const BIN: &str = env!("CARGO_BIN_EXE_isthmus-smol");

include!("../../tests/runtime/prosody_cases.rs");
