//! `stele step RUN`: a time-travel stepper over a run's events. Keys:
//! `n` / → forward, `p` / ← back, `e` the current event in full, `s` the
//! run's state as of it, `g N` go to event N, `h` help, `q` quit. On a
//! terminal keys act at once; when stdin is not a terminal, commands are
//! read line by line (`n`, `p`, `e`, `s`, `g 5`, `q`), so the stepper can
//! be scripted: `printf 'n\nn\ns\nq\n' | stele step run-1`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use stele_journal::{Event, RunId, Seq};
use stele_replay::RunState;

use crate::journal_cmd::open_reader;

const HELP: &str = "n/→ next  p/← previous  e event  s state  g N go to event N  h help  q quit";

enum Cmd {
    Next,
    Prev,
    Event,
    State,
    Go(usize),
    Help,
    Quit,
    Unknown(String),
}

fn parse_line(line: &str) -> Cmd {
    let mut words = line.split_whitespace();
    match words.next().unwrap_or("") {
        "n" | "next" | "" => Cmd::Next,
        "p" | "prev" | "back" => Cmd::Prev,
        "e" | "event" => Cmd::Event,
        "s" | "state" => Cmd::State,
        "h" | "help" | "?" => Cmd::Help,
        "q" | "quit" | "exit" => Cmd::Quit,
        "g" | "go" => match words.next().and_then(|n| n.parse().ok()) {
            Some(n) => Cmd::Go(n),
            None => Cmd::Unknown(line.to_owned()),
        },
        _ => Cmd::Unknown(line.to_owned()),
    }
}

fn line_of(events: &[Event], i: usize) -> String {
    let e = &events[i];
    format!(
        "[{}/{}] seq {} {} {}",
        i + 1,
        events.len(),
        e.seq,
        e.body.kind(),
        stele_replay::run::summary(&e.body)
    )
}

/// Applies one command; returns false to quit.
fn act(events: &[Event], pos: &mut usize, cmd: Cmd, out: &mut impl Write) -> Result<bool> {
    match cmd {
        Cmd::Next => {
            if *pos + 1 < events.len() {
                *pos += 1;
                writeln!(out, "{}", line_of(events, *pos))?;
            } else {
                writeln!(out, "(at the last event) {}", line_of(events, *pos))?;
            }
        }
        Cmd::Prev => {
            if *pos > 0 {
                *pos -= 1;
                writeln!(out, "{}", line_of(events, *pos))?;
            } else {
                writeln!(out, "(at the first event) {}", line_of(events, *pos))?;
            }
        }
        Cmd::Go(n) => {
            if n >= 1 && n <= events.len() {
                *pos = n - 1;
                writeln!(out, "{}", line_of(events, *pos))?;
            } else {
                writeln!(out, "no event {n}: the run has events 1 to {}", events.len())?;
            }
        }
        Cmd::Event => writeln!(out, "{}", serde_json::to_string_pretty(&events[*pos])?)?,
        Cmd::State => {
            let state = RunState::fold(&events[..=*pos]);
            writeln!(out, "{}", serde_json::to_string_pretty(&state)?)?;
        }
        Cmd::Help => writeln!(out, "{HELP}")?,
        Cmd::Quit => return Ok(false),
        Cmd::Unknown(what) => writeln!(out, "unknown command {what:?}; {HELP}")?,
    }
    out.flush()?;
    Ok(true)
}

/// `stele step RUN`.
pub fn step(data: &Path, run: &str) -> Result<ExitCode> {
    let reader = open_reader(data)?;
    let id = RunId::new(run.to_owned())?;
    let events: Vec<Event> = reader
        .run(&id, Seq(1))
        .map(|e| e.and_then(|e| e.to_event()))
        .collect::<stele_journal::Result<_>>()
        .with_context(|| format!("reading run {run}"))?;
    if events.is_empty() {
        anyhow::bail!("no run named {run} in this journal (list them with `stele runs`)");
    }
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut pos = 0;
    writeln!(out, "{run}: {} events; {HELP}", events.len())?;
    writeln!(out, "{}", line_of(&events, pos))?;
    out.flush()?;
    if std::io::stdin().is_terminal() {
        let term = console::Term::stdout();
        loop {
            let cmd = match term.read_key().context("reading a key")? {
                console::Key::ArrowRight | console::Key::Enter | console::Key::Char('n' | ' ') => Cmd::Next,
                console::Key::ArrowLeft | console::Key::Char('p') => Cmd::Prev,
                console::Key::Char('e') => Cmd::Event,
                console::Key::Char('s') => Cmd::State,
                console::Key::Char('h' | '?') => Cmd::Help,
                console::Key::Char('q') | console::Key::Escape | console::Key::CtrlC => Cmd::Quit,
                console::Key::Char('g') => {
                    write!(out, "go to event: ")?;
                    out.flush()?;
                    let line = term.read_line().context("reading a number")?;
                    parse_line(&format!("g {line}"))
                }
                other => Cmd::Unknown(format!("{other:?}")),
            };
            if !act(&events, &mut pos, cmd, &mut out)? {
                break;
            }
        }
    } else {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading a command from stdin")?;
            if !act(&events, &mut pos, parse_line(line.trim()), &mut out)? {
                break;
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
