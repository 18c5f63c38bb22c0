//! Output capture: reading workers' stdout and stderr pipes and writing their lines where the
//! program's [`OutputSpec`] says (the log, a rotated file, nowhere), in the log's format (text,
//! or with `log_format = "json"` one JSON object a line naming the program, instance, pid and
//! stream: [`crate::log::json`]; output files follow the log handle's format).
//!
//! [`Capture`] owns the pipes and their framers, the read backlog and the log handle; the line
//! format and the rotated file are [`super::output`]'s. Each wake-up reads at most
//! [`READ_BUDGET`] bytes from a pipe, then serves the others (the pipe waits in the backlog).
//! It does not poll, spawn, or touch instances' states.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::Read;
use std::ops::ControlFlow;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Instant, SystemTime};

use mio::{Registry, Token};

use super::Supervisor;
use super::output::{self, RotatingFile};
use super::sources::{Source, Sources};
use super::table::{InstanceIndex, Program, ProgramId};
use crate::config::OutputSpec;
use crate::error::{Error, Result};
use crate::log::{LogFormat, LogHandle, OutputSource};
use crate::stream::{LineFramer, ReadEnd, read_nonblocking};

/// Bytes read from one pipe per wake-up before serving the others.
const READ_BUDGET: usize = 256 * 1024;
/// Longest captured line; longer ones are split.
const MAX_LINE: usize = 16 * 1024;

/// Whose lines a pipe carries: the program and the instance's index.
pub(crate) type Label = (ProgramId, InstanceIndex);

/// A pipe as `warden upgrade` hands it over: descriptor, whose, which stream, unfinished line.
pub(crate) type HandedPipe = (RawFd, (Label, i32), Stream, Vec<u8>);

/// Which of a worker's output streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    /// `stdout` or `stderr`.
    fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The read end of one worker's stdout or stderr pipe.
struct OutputPipe {
    file: File,
    framer: LineFramer,
    owner: Label,
    /// The process whose pipe it is.
    pid: i32,
    stream: Stream,
}

/// Every open output pipe, the pipes with bytes left to read, and the log.
#[derive(Default)]
pub(crate) struct Capture {
    pipes: HashMap<Token, OutputPipe>,
    backlog: VecDeque<Token>,
    /// Where `OutputSpec::Log` lines go (default: the `log` facade).
    pub(crate) log: Option<LogHandle>,
}

impl Capture {
    /// Watches a new worker's pipe (made non-blocking here).
    pub(crate) fn add(
        &mut self,
        sources: &mut Sources,
        registry: &Registry,
        file: File,
        (owner, pid): (Label, i32),
        stream: Stream,
    ) -> Result<Token> {
        nix::fcntl::fcntl(
            &file,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| Error::sys("fcntl", e))?;
        let token = sources.add(registry, file.as_raw_fd(), Source::Pipe)?;
        let framer = LineFramer::new(MAX_LINE);
        let pipe = OutputPipe {
            file,
            framer,
            owner,
            pid,
            stream,
        };
        self.pipes.insert(token, pipe);
        Ok(token)
    }

    /// Every pipe, for `warden upgrade`: its descriptor (kept open), whose it is, and the
    /// unfinished line read from it so far (taken out of its framer).
    pub(crate) fn export(&mut self) -> Vec<HandedPipe> {
        self.pipes
            .values_mut()
            .map(|p| {
                (
                    p.file.as_raw_fd(),
                    (p.owner, p.pid),
                    p.stream,
                    p.framer.carry(),
                )
            })
            .collect()
    }

    /// Watches a pipe handed over by an earlier image of this process (`warden upgrade`),
    /// whose unfinished line so far was `partial`.
    pub(crate) fn adopt(
        &mut self,
        sources: &mut Sources,
        registry: &Registry,
        file: File,
        owner: (Label, i32),
        stream: Stream,
        partial: &[u8],
    ) -> Result<()> {
        let token = self.add(sources, registry, file, owner, stream)?;
        if let Some(pipe) = self.pipes.get_mut(&token) {
            pipe.framer.push(partial, &mut |_| {});
        }
        Ok(())
    }

    /// Whether pipes wait with bytes left over from their budget.
    pub(crate) fn has_backlog(&self) -> bool {
        !self.backlog.is_empty()
    }

    /// Reads what `token`'s pipe has, up to the budget: its complete lines, whose they are; a
    /// pipe at end of file is closed.
    fn read(
        &mut self,
        sources: &mut Sources,
        registry: &Registry,
        token: Token,
    ) -> Option<(Label, i32, Stream, Vec<String>)> {
        let pipe = self.pipes.get_mut(&token)?;
        let mut buf = [0u8; 64 * 1024];
        let mut total = 0;
        let mut lines: Vec<String> = Vec::new();
        let end = read_nonblocking(
            &mut (&mut *pipe, &mut buf),
            |(pipe, buf)| pipe.file.read(&mut buf[..]),
            |(pipe, buf), n| {
                pipe.framer
                    .push(&buf[..n], &mut |l| lines.push(l.to_string()));
                total += n;
                if total >= READ_BUDGET {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            },
        );
        match end {
            ReadEnd::Closed => pipe.framer.finish(&mut |l| lines.push(l.to_string())),
            ReadEnd::Paused => self.backlog.push_back(token),
            ReadEnd::Drained => {}
        }
        let (owner, pid, stream) = (pipe.owner, pipe.pid, pipe.stream);
        if end == ReadEnd::Closed
            && let Some(pipe) = self.pipes.remove(&token)
        {
            sources.remove(registry, token, pipe.file.as_raw_fd());
        }
        Some((owner, pid, stream, lines))
    }
}

impl Supervisor {
    /// Reads a worker's pipe and writes the lines.
    pub(super) fn read_pipe(&mut self, token: Token) {
        let registry = self.poll.registry();
        let Some(((p, index), pid, stream, lines)) =
            self.capture.read(&mut self.sources, registry, token)
        else {
            return;
        };
        write_lines(
            &mut self.table[p],
            (index, pid),
            stream,
            &lines,
            self.capture.log.as_ref(),
        );
    }

    /// Reads the pipes left over from the last wake-up's budgets.
    pub(super) fn read_backlog(&mut self) {
        let backlog: Vec<Token> = self.capture.backlog.drain(..).collect();
        for t in backlog {
            self.read_pipe(t);
        }
    }

    /// Reads every pipe once (at the end of a shutdown).
    pub(super) fn drain_all_pipes(&mut self) {
        let tokens: Vec<Token> = self.capture.pipes.keys().copied().collect();
        for t in tokens {
            self.read_pipe(t);
        }
    }

    /// Reopens the daemon's log file and every program's output file; each failure is logged
    /// and returned (a file that failed keeps being written where it was).
    pub(super) fn reopen_logs(&mut self) -> std::result::Result<(), Vec<Error>> {
        let mut failed = Vec::new();
        if let Some(log) = &self.capture.log {
            match log.reopen() {
                Ok(()) => log::info!("log files reopened"),
                Err(e) => {
                    log::error!("cannot reopen the log: {e}");
                    failed.push(e);
                }
            }
        }
        for prog in self.table.programs_mut() {
            for file in prog.files.iter_mut().flatten() {
                if let Err(e) = file.reopen() {
                    log::error!("cannot reopen {}: {e}", file.path().display());
                    failed.push(Error::io("cannot reopen output file", file.path(), e));
                }
            }
        }
        if failed.is_empty() {
            Ok(())
        } else {
            Err(failed)
        }
    }
}

/// Writes `lines` of instance `index`'s `stream` (its process `pid`'s) where `prog` sends that
/// stream, in the log's format.
fn write_lines(
    prog: &mut Program,
    (index, pid): (InstanceIndex, i32),
    stream: Stream,
    lines: &[String],
    log: Option<&LogHandle>,
) {
    if lines.is_empty() {
        return;
    }
    let tag = format!("{}[{index}]", prog.def.name);
    let source = OutputSource {
        program: &prog.def.name,
        instance: index.0,
        pid: Some(pid),
        stream: stream.name(),
    };
    let format = log.map_or(LogFormat::Text, LogHandle::format);
    let target = match stream {
        Stream::Stdout => &prog.def.stdout,
        Stream::Stderr => &prog.def.stderr,
    };
    match target {
        OutputSpec::Null => {}
        OutputSpec::Log => {
            for line in lines {
                match log {
                    Some(log) => log.write_output(&source, line),
                    None => log::info!(target: "warden::output", "{tag} {line}"),
                }
            }
        }
        OutputSpec::File(_) => {
            let shared = prog.def.stdout == prog.def.stderr;
            let file = if stream == Stream::Stdout || shared {
                0
            } else {
                1
            };
            if let Some(file) = prog.files[file].as_mut() {
                let now = SystemTime::now();
                let mut failed = None;
                for (i, line) in lines.iter().enumerate() {
                    let line = match format {
                        LogFormat::Text => output::format_line(&tag, line, now),
                        LogFormat::Json => output::json_line(&source, line, now),
                    };
                    if let Err(e) = file.write_line(&line) {
                        // The rest of the batch would fail the same way: dropped with it.
                        failed = Some((e, lines.len() - i));
                        break;
                    }
                }
                report_output_write(&source, &tag, file, failed);
            }
        }
    }
}

/// Logs what a batch of writes to a program's output file came to, through its [`Repeated`]
/// state: the first failure of a kind in full, then at most one summary of the dropped lines per
/// [`output::FAILURE_SUMMARY_EVERY`], and the recovery once. `failed`: the error and how many
/// lines it dropped.
///
/// [`Repeated`]: crate::log::repeat::Repeated
fn report_output_write(
    source: &crate::log::OutputSource<'_>,
    tag: &str,
    file: &mut RotatingFile,
    failed: Option<(std::io::Error, usize)>,
) {
    use crate::log::repeat::Verdict;
    use log::Level::{Error, Info};
    let about = |level: log::Level, line: std::fmt::Arguments<'_>| {
        let (instance, pid) = (Some(source.instance), source.pid);
        crate::log::about!(level, source.program, instance, pid, "{line}");
    };
    let path = file.path().display().to_string();
    let Some((e, dropped)) = failed else {
        if let Some(untold) = file.failures.succeeded() {
            about(
                Info,
                format_args!("{tag}: writing {path} again ({untold} more line(s) were dropped)"),
            );
        }
        return;
    };
    let kind = e.raw_os_error().map_or_else(
        || e.kind().to_string(),
        |n| nix::errno::Errno::from_raw(n).to_string(),
    );
    match file.failures.failed(&kind, dropped as u64, Instant::now()) {
        Verdict::First { untold } => {
            let before = if untold > 0 {
                format!(" ({untold} more line(s) were dropped for another error)")
            } else {
                String::new()
            };
            about(
                Error,
                format_args!(
                    "{tag}: cannot write {path}: {e}; dropping its output until it can be \
                     written (summarised every {}s){before}",
                    output::FAILURE_SUMMARY_EVERY.as_secs()
                ),
            );
        }
        Verdict::Summary { count } => {
            about(
                Error,
                format_args!("{count} more line(s) dropped for {tag}: cannot write {path}: {kind}"),
            );
        }
        Verdict::Quiet => {}
    }
}
