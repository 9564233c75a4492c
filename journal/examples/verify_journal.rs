//! `cargo run --release -p stele-journal --example verify_journal -- DATA
//! [RUNS]`: what `stele journal verify DATA` does — [`Reader::open`] then
//! [`verify`] — `RUNS` times (default 3), printing one JSON line per run
//! with the events verified, events/s of the walk, and the process's CPU
//! time (user + system) spent in it.
//!
//! It exists to measure the journal's verification on its own: this
//! example builds the journal crate alone, so a baseline tree can be
//! measured beside the current one in the same run without building the
//! whole binary twice (BENCHMARKS.md, "`journal verify`: signature
//! batches").

use std::process::ExitCode;
use std::time::Instant;

use stele_journal::{Reader, verify};

/// User + system CPU time of this process so far, in seconds.
fn cpu_s() -> f64 {
    let text = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command's closing parenthesis, from the 3rd
    // (state): utime and stime are the 14th and 15th, in clock ticks (100
    // per second on Linux).
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    match (
        f.get(11).and_then(|u| u.parse::<f64>().ok()),
        f.get(12).and_then(|s| s.parse::<f64>().ok()),
    ) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(data) = args.next() else {
        eprintln!("usage: verify_journal DATA [RUNS]");
        return ExitCode::from(2);
    };
    let runs: u32 = match args.next().map(|r| r.parse()) {
        None => 3,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("RUNS must be a positive number");
            return ExitCode::from(2);
        }
    };
    for run in 1..=runs {
        let (cpu0, t0) = (cpu_s(), Instant::now());
        let reader = match Reader::open(&data) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("opening journal {data}: {e}");
                return ExitCode::from(2);
            }
        };
        let report = verify(&reader, &|_, _| {});
        let (wall, cpu) = (t0.elapsed().as_secs_f64(), cpu_s() - cpu0);
        drop(reader);
        if !report.ok {
            eprintln!(
                "verification failed: {:?} at {:?}",
                report.error, report.first_bad_seq
            );
            return ExitCode::from(1);
        }
        println!(
            "{{\"run\":{run},\"events\":{},\"events_per_s\":{:.0},\"wall_s\":{wall:.3},\"cpu_s\":{cpu:.3},\"cpu_us_per_event\":{:.2}}}",
            report.events,
            report.events_per_s,
            cpu * 1e6 / report.events as f64
        );
    }
    ExitCode::SUCCESS
}
