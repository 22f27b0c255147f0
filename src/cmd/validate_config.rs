//! `npd-ext validate-config FILE...`: every problem in every file, each with
//! file:line:column and key path. Exit 0 when all are valid, 1 otherwise.

use std::process::ExitCode;

use crate::cli::ValidateConfigArgs;
use crate::config::{self, Level};

/// Plugins of upstream NPD's other monitor kinds, which this build cannot check yet.
const NOT_YET: [&str; 4] = ["kmsg", "filelog", "journald", "custom"];

pub fn run(args: &ValidateConfigArgs) -> ExitCode {
    let mut invalid = 0usize;
    for path in &args.files {
        if let Some(plugin) = plugin_of(path).filter(|p| NOT_YET.contains(&p.as_str())) {
            say!(
                "{}: error: plugin: {plugin:?} configs cannot be checked by this build yet (only \"external\")",
                path.display()
            );
            invalid += 1;
            continue;
        }
        let checked = config::check_external_file(path);
        let errors = checked.errors().count();
        for d in &checked.diagnostics {
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

fn plugin_of(path: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v.get("plugin")?.as_str().map(str::to_owned)
}
