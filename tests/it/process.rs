//! The native process runner (`stele_engine::process`) on real processes,
//! launched through the real `stele` binary's hidden `__confine` subcommand:
//! exit codes and signals, timeouts, stop, bounded output, the limits in
//! force, sampling, process groups, spawn errors and confinement detection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use stele_engine::process::{
    Confinement, ExitReport, Launcher, ProcessEvent, ProcessHandle, ProcessSpec, SpawnError,
    detect_confinement, spawn,
};
use tokio::sync::mpsc;

/// Longest a test waits for a process's `Exited` before calling it hung.
const EXIT_TIMEOUT: Duration = Duration::from_secs(60);

fn launcher() -> Launcher {
    Launcher {
        program: env!("CARGO_BIN_EXE_stele").into(),
    }
}

fn spec(command: &str, args: &[&str]) -> ProcessSpec {
    ProcessSpec {
        task: "it-process".into(),
        command: command.into(),
        args: args.iter().map(|a| a.to_string()).collect(),
        env: BTreeMap::new(),
        workdir: None,
        memory_mb: 256,
        cpu_cores: 1.0,
        timeout: Duration::from_secs(20),
        output_limit: 64 * 1024,
        sample_every: Duration::from_secs(5),
    }
}

fn sh(script: &str) -> ProcessSpec {
    spec("sh", &["-c", script])
}

/// A spawned process and the receiving end of its events.
struct Running {
    handle: ProcessHandle,
    events: mpsc::UnboundedReceiver<ProcessEvent>,
    seen: Vec<ProcessEvent>,
}

fn start(spec: ProcessSpec) -> Running {
    let (tx, mut events) = mpsc::unbounded_channel();
    let handle = spawn(spec, &launcher(), &detect_confinement(), tx).expect("spawn");
    let started = events.try_recv().expect("Started is sent before spawn returns");
    assert!(
        matches!(&started, ProcessEvent::Started { pid, .. } if *pid == handle.pid() && *pid > 0),
        "first event: {started:?}"
    );
    Running {
        handle,
        events,
        seen: vec![started],
    }
}

impl Running {
    /// Collects events up to `Exited` and checks the event protocol: one
    /// `Started` first, `Sampled` in between, exactly one `Exited` last.
    async fn exit(mut self) -> (Vec<ProcessEvent>, ExitReport) {
        let report = tokio::time::timeout(EXIT_TIMEOUT, async {
            loop {
                let event = self
                    .events
                    .recv()
                    .await
                    .expect("the runner sends Exited before closing");
                let last = matches!(event, ProcessEvent::Exited(_));
                self.seen.push(event);
                if last {
                    break;
                }
            }
        })
        .await;
        assert!(
            report.is_ok(),
            "no Exited within {EXIT_TIMEOUT:?}; saw {:?}",
            self.seen
        );
        assert!(self.events.recv().await.is_none(), "events after Exited");
        for middle in &self.seen[1..self.seen.len() - 1] {
            assert!(
                matches!(middle, ProcessEvent::Sampled { .. }),
                "unexpected event {middle:?}"
            );
        }
        let Some(ProcessEvent::Exited(report)) = self.seen.last().cloned() else {
            unreachable!()
        };
        (self.seen, report)
    }
}

async fn run(spec: ProcessSpec) -> ExitReport {
    start(spec).exit().await.1
}

/// Waits (bounded) until `path` holds a line, and returns it.
async fn read_when_written(path: &Path) -> String {
    for _ in 0..200 {
        if let Ok(s) = std::fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return s.trim().to_string();
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} was never written", path.display());
}

/// Whether `pid` has ended (gone, or a zombie nobody reaps: pid 1 in a
/// container may not).
fn ended(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}

async fn wait_ended(pid: u32) {
    for _ in 0..200 {
        if ended(pid) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("process {pid} is still alive: it escaped the task's process group");
}

fn in_rlimits_mode() -> bool {
    matches!(detect_confinement(), Confinement::Rlimits { .. })
}

#[tokio::test]
async fn echo_starts_then_exits_zero_with_its_exact_stdout() {
    let running = start(spec("echo", &["hello", "world"]));
    let (events, report) = running.exit().await;
    let ProcessEvent::Started { confinement, .. } = &events[0] else {
        unreachable!()
    };
    assert_eq!(confinement, &detect_confinement().describe());
    assert_eq!(report.code, Some(0), "{report:?}");
    assert_eq!(report.signal, None);
    assert_eq!(report.stdout, "hello world\n");
    assert_eq!(report.stderr, "");
    assert!(report.success());
    assert_eq!(report.summary(), "exit 0");
    assert!(!report.timed_out && !report.stopped);
}

#[tokio::test]
async fn a_non_zero_exit_code_is_reported_with_stderr() {
    let report = run(sh("echo oops >&2; exit 3")).await;
    assert_eq!((report.code, report.signal), (Some(3), None));
    assert_eq!(report.stderr, "oops\n");
    assert!(!report.success());
    assert_eq!(report.summary(), "exit 3");
}

#[tokio::test]
async fn death_by_signal_is_reported() {
    let report = run(sh("kill -9 $$")).await;
    assert_eq!((report.code, report.signal), (None, Some(9)), "{report:?}");
    assert!(!report.timed_out && !report.stopped);
    assert_eq!(report.summary(), "killed by signal 9 (SIGKILL)");
}

#[tokio::test]
async fn a_timeout_terminates_the_process() {
    let mut s = spec("sleep", &["30"]);
    s.timeout = Duration::from_secs(1);
    let began = Instant::now();
    let report = run(s).await;
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "took {:?}",
        began.elapsed()
    );
    assert!(report.timed_out && !report.stopped, "{report:?}");
    assert_eq!(report.signal, Some(15), "sleep dies of the SIGTERM: {report:?}");
    assert!(report.wall_ms >= 900, "{report:?}");
    assert!(
        report
            .summary()
            .starts_with("killed by signal 15 (SIGTERM): timed out after"),
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn a_timeout_kills_what_ignores_sigterm() {
    let mut s = sh("trap '' TERM; sleep 30");
    s.timeout = Duration::from_millis(500);
    let report = run(s).await;
    assert!(report.timed_out, "{report:?}");
    assert_eq!(report.signal, Some(9), "SIGKILL after the grace: {report:?}");
    assert!(report.wall_ms >= 2000, "the grace was kept: {report:?}");
}

#[tokio::test]
async fn stop_ends_a_plain_process_with_sigterm() {
    let running = start(spec("sleep", &["30"]));
    running.handle.stop(Duration::from_secs(10));
    running.handle.stop(Duration::from_millis(1)); // idempotent: the first grace holds
    let began = Instant::now();
    let report = running.exit().await.1;
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "took {:?}",
        began.elapsed()
    );
    assert!(report.stopped && !report.timed_out, "{report:?}");
    assert_eq!(report.signal, Some(15), "{report:?}");
    assert!(!report.success());
}

#[tokio::test]
async fn stop_kills_after_the_grace_what_ignores_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ready = dir.path().join("ready");
    let running = start(sh(&format!(
        "trap '' TERM; echo yes > {}; sleep 30",
        ready.display()
    )));
    read_when_written(&ready).await;
    let began = Instant::now();
    running.handle.stop(Duration::from_millis(800));
    let handle = running.handle.clone();
    let report = running.exit().await.1;
    let took = began.elapsed();
    assert!(
        took >= Duration::from_millis(700),
        "killed before the grace: {took:?}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert!(report.stopped, "{report:?}");
    assert_eq!(report.signal, Some(9), "{report:?}");
    assert!(
        report
            .summary()
            .starts_with("killed by signal 9 (SIGKILL): stopped after"),
        "{}",
        report.summary()
    );
    handle.stop(Duration::ZERO); // after the exit: nothing to do, no panic
}

#[tokio::test]
async fn stop_reaches_grandchildren_through_the_process_group() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("grandchild");
    // The grandchild ignores SIGTERM too; the group's SIGKILL still ends it.
    let script = format!(
        "(trap '' TERM; exec sleep 30) & echo $! > {}; wait",
        pid_file.display()
    );
    let running = start(sh(&script));
    let grandchild: u32 = read_when_written(&pid_file).await.parse().expect("a pid");
    assert!(!ended(grandchild), "the grandchild runs");
    running.handle.stop(Duration::from_millis(500));
    let report = running.exit().await.1;
    assert!(report.stopped, "{report:?}");
    wait_ended(grandchild).await;
}

#[tokio::test]
async fn processes_left_behind_do_not_outlive_the_task() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pid_file = dir.path().join("orphan");
    // The leader exits at once; the background sleep still holds stdout.
    let began = Instant::now();
    let report = run(sh(&format!(
        "sleep 30 & echo $! > {}; echo done",
        pid_file.display()
    )))
    .await;
    assert!(
        began.elapsed() < Duration::from_secs(15),
        "took {:?}",
        began.elapsed()
    );
    assert_eq!(report.code, Some(0), "{report:?}");
    assert_eq!(report.stdout, "done\n");
    let orphan: u32 = read_when_written(&pid_file).await.parse().expect("a pid");
    wait_ended(orphan).await;
}

#[tokio::test]
async fn output_is_bounded_and_the_rest_counted() {
    let mut s = sh("yes | head -c 10000000");
    s.output_limit = 4096;
    let report = run(s).await;
    assert_eq!(report.code, Some(0), "{report:?}");
    assert_eq!(report.stdout.len(), 4096);
    assert_eq!(report.stdout, "y\n".repeat(2048));
    assert_eq!(report.stdout_dropped, 10_000_000 - 4096);
    assert_eq!(report.stderr_dropped, 0);
    assert!(
        report.summary().ends_with("; 9995904 bytes of stdout dropped"),
        "{}",
        report.summary()
    );
}

#[tokio::test]
async fn both_streams_are_read_concurrently() {
    // 1 MB to stderr before anything to stdout: a runner reading stdout
    // first would deadlock on a full stderr pipe.
    let mut s = sh("head -c 1000000 /dev/zero >&2; echo out");
    s.output_limit = 10;
    let report = run(s).await;
    assert_eq!(report.code, Some(0), "{report:?}");
    assert_eq!(report.stdout, "out\n");
    assert_eq!(report.stderr.len(), 10);
    assert_eq!(report.stderr_dropped, 1_000_000 - 10);
}

#[tokio::test]
async fn the_memory_limit_is_in_force() {
    let script = |bytes: u64| format!("x=$(head -c {bytes} /dev/zero | tr '\\0' a); echo ok");
    let mut small = sh(&script(1000));
    small.memory_mb = 32;
    let report = run(small).await;
    assert_eq!(
        (report.code, report.stdout.as_str()),
        (Some(0), "ok\n"),
        "the control runs under 32 MiB: {report:?}"
    );

    let mut big = sh(&script(200_000_000));
    big.memory_mb = 32;
    let report = run(big).await;
    assert!(!report.success(), "200 MB in a 32 MiB limit: {report:?}");
    assert!(!report.stdout.contains("ok"), "{report:?}");
}

#[tokio::test]
async fn the_rlimits_are_those_asked_for() {
    if !in_rlimits_mode() {
        return; // cgroup v2 confines memory here instead of RLIMIT_AS
    }
    let mut s = sh("ulimit -v; ulimit -t; ulimit -c");
    s.memory_mb = 64;
    s.timeout = Duration::from_secs(3);
    s.cpu_cores = 1.5;
    let report = run(s).await;
    // 64 MiB in KiB; ceil(3 s × 1.5 cores) = 5 s; no core files.
    assert_eq!(report.stdout, "65536\n5\n0\n", "{report:?}");
}

#[test]
fn the_cpu_time_ceiling_ends_a_busy_loop() {
    let run = crate::run_bounded(&[
        "__confine",
        "--cpu-seconds",
        "1",
        "--",
        "sh",
        "-c",
        "while :; do :; done",
    ]);
    assert!(!run.timed_out, "RLIMIT_CPU did not end the loop: {run:?}");
    assert_eq!(run.signal, Some(24), "SIGXCPU at the soft limit: {run:?}");
}

#[test]
fn the_launcher_reports_what_it_cannot_start() {
    let run = crate::run_bounded(&["__confine", "--memory-mb", "64", "--", "/nonexistent/program"]);
    assert_eq!(run.code, Some(127), "{run:?}");
    assert!(
        run.stderr
            .starts_with("error: cannot start confined command: /nonexistent/program: "),
        "{}",
        run.stderr
    );
    let run = crate::run_bounded(&["__confine", "--memory-mb", "lots", "--", "true"]);
    assert_eq!(run.code, Some(127), "{run:?}");
    assert!(
        run.stderr.contains("--memory-mb needs a positive whole number"),
        "{}",
        run.stderr
    );
}

#[tokio::test]
async fn resources_are_sampled_while_it_runs() {
    let mut s = sh("i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done; sleep 1.5");
    s.sample_every = Duration::from_millis(200);
    let (events, report) = start(s).exit().await;
    let samples: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            ProcessEvent::Sampled { rss_kb, cpu_ms } => Some((*rss_kb, *cpu_ms)),
            _ => None,
        })
        .collect();
    assert!(samples.len() >= 2, "samples: {samples:?}");
    assert!(
        samples.iter().all(|(rss_kb, _)| *rss_kb > 0),
        "samples: {samples:?}"
    );
    assert!(
        report.max_rss_kb >= samples.iter().map(|s| s.0).max().unwrap_or(0),
        "{report:?}"
    );
    assert!(report.cpu_ms > 0, "the loop used CPU: {report:?}");
    assert!(
        report.cpu_ms >= samples.iter().map(|s| s.1).max().unwrap_or(0),
        "{report:?}"
    );
}

#[tokio::test]
async fn the_environment_is_the_specs_and_the_workdir_is_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut s = sh("pwd; env | cut -d= -f1 | sort | tr '\\n' ' '; echo; echo \"$FOO\"; cat; echo end");
    s.env.insert("FOO".into(), "bar baz".into());
    s.workdir = Some(dir.path().to_path_buf());
    let report = run(s).await;
    let dir = dir.path().canonicalize().expect("canonical tempdir");
    // PATH is added from stele's environment; PWD is the shell's own; stdin
    // is /dev/null, so `cat` ends at once.
    assert_eq!(
        report.stdout,
        format!("{}\nFOO PATH PWD \nbar baz\nend\n", dir.display()),
        "{report:?}"
    );
}

#[tokio::test]
async fn spawn_errors_name_what_is_wrong() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let confinement = detect_confinement();
    let spawn_err = |s: ProcessSpec| match spawn(s, &launcher(), &confinement, tx.clone()) {
        Err(e) => e,
        Ok(h) => panic!("spawned pid {}", h.pid()),
    };

    let e = spawn_err(spec("no-such-command-xyz", &[]));
    assert!(matches!(e, SpawnError::CommandNotFound { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.starts_with("task it-process: command `no-such-command-xyz` not found in PATH ("),
        "{msg}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("script.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write script");
    let e = spawn_err(spec(&script.display().to_string(), &[]));
    assert!(matches!(e, SpawnError::NotExecutable { .. }), "{e:?}");
    assert!(
        e.to_string().contains("is not executable: no execute permission"),
        "{e}"
    );

    let mut s = spec("true", &[]);
    s.workdir = Some(dir.path().join("missing"));
    let e = spawn_err(s);
    assert!(matches!(e, SpawnError::Workdir { .. }), "{e:?}");
    assert!(e.to_string().ends_with("/missing does not exist"), "{e}");

    let mut s = spec("true", &[]);
    s.sample_every = Duration::ZERO;
    assert!(matches!(spawn_err(s), SpawnError::InvalidSpec { .. }));

    let bad_launcher = Launcher {
        program: PathBuf::from("/nonexistent/stele"),
    };
    match spawn(spec("true", &[]), &bad_launcher, &confinement, tx.clone()) {
        Err(e @ SpawnError::Launcher { .. }) => assert!(e.to_string().contains("/nonexistent/stele"), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn spawn_outside_a_runtime_is_an_error_not_a_panic() {
    let (tx, _rx) = mpsc::unbounded_channel();
    let result = spawn(spec("true", &[]), &launcher(), &detect_confinement(), tx);
    assert!(matches!(result, Err(SpawnError::NoRuntime { .. })), "{result:?}");
}

#[test]
fn confinement_detection_matches_the_machine() {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    // Field 5 is the mount point; the file system type follows " - ".
    let fs_type = |mount_point: &str| {
        mountinfo.lines().rev().find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (left.split_whitespace().nth(4)? == mount_point).then(|| right.split_whitespace().next())?
        })
    };
    let confinement = detect_confinement();
    let description = confinement.describe();
    eprintln!("confinement here: {description}");
    if fs_type("/sys/fs/cgroup") == Some("cgroup2") {
        // cgroup v2 may or may not be usable (controllers, delegation); either
        // way the answer is one of the two, described.
        assert!(!description.is_empty());
        return;
    }
    let Confinement::Rlimits { why } = &confinement else {
        panic!("/sys/fs/cgroup is not cgroup2, yet: {description}");
    };
    assert!(
        description.starts_with("rlimits (RLIMIT_AS, RLIMIT_CPU); cgroup v2 not in force: "),
        "{description}"
    );
    assert!(why.starts_with("/sys/fs/cgroup is "), "{why}");
    if fs_type("/sys/fs/cgroup") == Some("tmpfs") {
        assert!(why.contains("cgroup v1"), "{why}");
    }
    if fs_type("/sys/fs/cgroup/unified") == Some("cgroup2") {
        assert!(
            why.contains("/sys/fs/cgroup/unified has "),
            "the hybrid mount is explained: {why}"
        );
    }
}
