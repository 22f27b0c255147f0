//! `npd-ext log-counter` (argv[0] `log-counter`): NPD's flags, one count of
//! the journal, upstream's line and exit code (0 below `--count`, 1 at or
//! above it, 2 when it cannot count).

use std::process::ExitCode;
use std::time::SystemTime;

use crate::cli::LogCounterArgs;
use crate::config::duration::parse_go;
use crate::helpers::log_counter::{self, Options};
use crate::helpers::{NON_OK, OK, UNKNOWN};

pub fn run(args: LogCounterArgs) -> ExitCode {
    let duration = |flag: &str, v: &str| {
        if v.is_empty() {
            return Ok(None);
        }
        parse_go(v)
            .map(Some)
            .map_err(|e| format!("failed to parse {flag} duration {v:?}: {e}"))
    };
    let parsed = duration("delay", &args.delay)
        .and_then(|delay| Ok((delay, duration("lookback", &args.lookback)?)));
    let (delay, lookback) = match parsed {
        Ok(d) => d,
        Err(e) => {
            // Upstream dies here (exit 255); the message goes where the
            // custom plugin monitor reads it, as every other error's does.
            say!("failed to get start time: {e}");
            return ExitCode::from(UNKNOWN);
        }
    };
    let options = Options {
        source: args.journald_source,
        log_path: args.log_path,
        lookback,
        delay,
        pattern: args.pattern,
        revert_pattern: args.revert_pattern,
        count: args.count,
    };
    let Some(uptime) = log_counter::uptime() else {
        say!("{}", log_counter::Error::Uptime);
        return ExitCode::from(UNKNOWN);
    };
    match log_counter::count(&options, SystemTime::now(), uptime) {
        Ok(n) if n >= options.count => {
            say!("{}", log_counter::found_line(n, options.count));
            ExitCode::from(NON_OK)
        }
        Ok(_) => ExitCode::from(OK),
        Err(e) => {
            say!("{}", chain(&e));
            ExitCode::from(UNKNOWN)
        }
    }
}

/// An error and its causes on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
