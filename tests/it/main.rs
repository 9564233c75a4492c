//! Cross-crate integration tests, compiled as one binary (`it`) of the `stele`
//! package so that they can run the real binary (`CARGO_BIN_EXE_stele`).
//! Every test works on a real journal in a temporary directory.

mod agents;
mod api_fuzz;
mod audit;
mod breakers;
mod bus;
mod cli;
mod config;
mod context;
mod context_index;
mod crash;
mod golden;
mod http;
mod http_context;
mod http_replay;
mod kill_on_drop;
mod layering;
mod lifecycle;
mod mcp;
mod nats;
mod nats_tls;
mod ops;
mod orga;
mod poison;
mod policy;
mod policy_reload;
mod process;
mod projections;
mod prop;
mod provider;
mod reasoning;
mod replay;
mod runtime;
mod saga;
mod sandbox;
mod scheduler;
mod sse;
mod tamper;
mod up;
mod up_runs;
#[cfg(feature = "lancedb")]
mod vectors;

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest any single `stele` call in a test may take before it counts as hung.
pub const TIMEOUT: Duration = Duration::from_secs(20);

/// What one `stele` call did.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    timed_out: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    pub fn no_panic(&self, what: &str) {
        assert!(
            !self.stderr.contains("panicked"),
            "{what}: stele panicked:\n{}",
            self.stderr
        );
        assert!(!self.timed_out, "{what}: stele hung (killed after {TIMEOUT:?})");
        assert!(
            self.signal.is_none(),
            "{what}: stele died of signal {:?}",
            self.signal
        );
    }
}

/// Runs `stele` with `args`, killing it after [`TIMEOUT`].
pub fn run_bounded(args: &[&str]) -> Run {
    let mut cmd: Command = stele();
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn stele");
    let mut out = child.stdout.take().expect("stdout piped");
    let mut err = child.stderr.take().expect("stderr piped");
    let out_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err_t = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let mut timed_out = false;
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait for stele") {
            break s;
        }
        if started.elapsed() > TIMEOUT {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait for killed stele");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Run {
        code: status.code(),
        signal: if timed_out { None } else { status.signal() },
        timed_out,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

/// The `stele` binary under test.
pub fn stele() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_stele"));
    // Agents written for the native process runner run natively unless a
    // test names a tier (the configured default is gvisor; tests/it/sandbox.rs
    // names its tiers).
    if std::env::var_os("STELE_SECURITY_DEFAULT_SANDBOX_TIER").is_none() {
        cmd.env("STELE_SECURITY_DEFAULT_SANDBOX_TIER", "native");
    }
    cmd
}
