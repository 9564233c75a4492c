//! Cross-crate integration tests, compiled as one binary (`it`) of the `stele`
//! package so that they can run the real binary (`CARGO_BIN_EXE_stele`).
//! Every test works on a real journal in a temporary directory.

mod cli;
mod crash;
mod golden;
mod layering;
mod poison;
mod prop;
mod tamper;

/// The `stele` binary under test.
pub fn stele() -> std::process::Command {
    std::process::Command::new(env!("CARGO_BIN_EXE_stele"))
}
