//! `npd-ext validate-config FILE...`: every problem in every file, each with
//! file:line:column and key path. Exit 0 when all are valid, 1 otherwise.

use std::process::ExitCode;

use crate::cli::ValidateConfigArgs;
use crate::config::{self, Diagnostic, Kind, Level};

pub fn run(args: &ValidateConfigArgs) -> ExitCode {
    let mut invalid = 0usize;
    for path in &args.files {
        let diagnostics = check(path);
        let errors = diagnostics
            .iter()
            .filter(|d| d.level == Level::Error)
            .count();
        for d in &diagnostics {
            if d.level == Level::Error || !args.quiet {
                say!("{d}");
            }
        }
        if errors > 0 {
            invalid += 1;
            say!(
                "{}: invalid ({errors} error{})",
                path.display(),
                if errors == 1 { "" } else { "s" }
            );
        } else if !args.quiet {
            say!("{}: ok", path.display());
        }
    }
    if invalid > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Every diagnostic for one file, whatever monitor it configures.
pub fn check(path: &std::path::Path) -> Vec<Diagnostic> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        // The external checker reports an unreadable file in the usual shape.
        Err(_) => return config::check_external_file(path).diagnostics,
    };
    match config::kind_of(&text) {
        Kind::SystemLog => config::syslog::check(path, &text).diagnostics,
        Kind::Custom => config::custom::check(path, &text).diagnostics,
        Kind::SystemStats => config::stats::check(path, &text).diagnostics,
        Kind::External | Kind::Unknown(_) => config::external::check(path, &text).diagnostics,
    }
}
