//! NPD's helper programs, which its shipped custom-plugin configs run from
//! `/home/kubernetes/bin/`: `log-counter` and `health-checker`. Each is a
//! one-shot check: it prints at most one line and exits 0 (OK), 1 (a
//! problem) or 2 (it could not tell), the custom plugin monitor's codes.
//!
//! Owns the checks and the commands they run. It must not talk to the
//! detector: the custom plugin monitor runs these as it runs any plugin.

pub mod health_checker;
pub mod log_counter;

use std::io::Read;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// The custom plugin monitor's exit codes (NPD `custompluginmonitor/types`).
pub const OK: u8 = 0;
pub const NON_OK: u8 = 1;
pub const UNKNOWN: u8 = 2;

/// How long the commands without a timeout flag may take (NPD's `CmdTimeout`).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a command gave no usable output.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} did not finish within {timeout:?} and was killed")]
    Timeout { program: String, timeout: Duration },
    #[error("{program} ended with {status}")]
    Failed {
        program: String,
        status: ExitStatus,
        /// What it wrote (stdout and stderr together).
        output: String,
    },
}

/// Runs `cmd` with stdin from `/dev/null` and stdout and stderr on one pipe
/// (Go's `CombinedOutput`), killing it at `timeout`. A zero timeout fails
/// at once, as Go's expired context does. The output loses one trailing
/// newline.
pub fn combined_output(mut cmd: Command, timeout: Duration) -> Result<String, CommandError> {
    let program = Path::new(cmd.get_program()).display().to_string();
    if timeout.is_zero() {
        return Err(CommandError::Timeout { program, timeout });
    }
    let spawn = |source| CommandError::Spawn {
        program: program.clone(),
        source,
    };
    let (mut reader, writer) = std::io::pipe().map_err(spawn)?;
    let writer2 = writer.try_clone().map_err(spawn)?;
    cmd.stdin(Stdio::null()).stdout(writer).stderr(writer2);
    let mut child = cmd.spawn().map_err(spawn)?;
    // The pipe's write ends now live only in the child (and its children).
    drop(cmd);
    let (tx, rx) = std::sync::mpsc::channel();
    let pid = child.id();
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = reader.read_to_end(&mut out);
        let _ = tx.send(out);
    });
    let out = match rx.recv_timeout(timeout) {
        Ok(out) => out,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            tracing::info!(pid, %program, "killed after {timeout:?}");
            return Err(CommandError::Timeout { program, timeout });
        }
    };
    let status = child.wait().map_err(spawn)?;
    let mut output = String::from_utf8_lossy(&out).into_owned();
    if output.ends_with('\n') {
        output.pop();
    }
    if status.success() {
        Ok(output)
    } else {
        Err(CommandError::Failed {
            program,
            status,
            output,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Command {
        let mut c = Command::new("/bin/sh");
        c.args(["-c", script]);
        c
    }

    #[test]
    fn output_is_combined_and_loses_one_newline() {
        let out =
            combined_output(sh("echo out; echo err >&2; echo"), COMMAND_TIMEOUT).expect("runs");
        assert_eq!(out, "out\nerr\n");
    }

    #[test]
    fn failures_and_timeouts_are_told_apart() {
        match combined_output(sh("echo no; exit 3"), COMMAND_TIMEOUT) {
            Err(CommandError::Failed { status, output, .. }) => {
                assert_eq!(status.code(), Some(3));
                assert_eq!(output, "no");
            }
            other => panic!("{other:?}"),
        }
        match combined_output(sh("exec sleep 30"), Duration::from_millis(200)) {
            Err(CommandError::Timeout { .. }) => {}
            other => panic!("{other:?}"),
        }
        match combined_output(sh("true"), Duration::ZERO) {
            Err(CommandError::Timeout { .. }) => {}
            other => panic!("{other:?}"),
        }
        match combined_output(Command::new("/nonexistent/prog"), COMMAND_TIMEOUT) {
            Err(e @ CommandError::Spawn { .. }) => {
                assert_eq!(e.to_string(), "cannot run /nonexistent/prog");
            }
            other => panic!("{other:?}"),
        }
    }
}
