//! `npd-ext health-checker` (argv[0] `health-checker`): NPD's flags, one
//! check, upstream's one line and exit code.

use std::collections::BTreeMap;
use std::process::ExitCode;

use crate::cli::HealthCheckerArgs;
use crate::helpers::health_checker::{self, Options, Verdict};
use crate::helpers::{NON_OK, OK, UNKNOWN};

pub fn run(args: HealthCheckerArgs) -> ExitCode {
    let mut log_patterns = BTreeMap::new();
    for v in &args.log_pattern {
        if let Err(e) = health_checker::parse_log_patterns(v, &mut log_patterns) {
            say!("invalid argument {v:?} for \"--log-pattern\" flag: {e}");
            return ExitCode::from(UNKNOWN);
        }
    }
    let options = Options {
        component: args.component,
        service: args.service,
        enable_repair: args.enable_repair,
        crictl_path: args.crictl_path,
        cri_socket_path: args.cri_socket_path,
        cri_timeout: args.cri_timeout,
        cooldown: args.cooldown_time,
        loopback: args.loopback_time,
        health_check_timeout: args.health_check_timeout,
        log_patterns,
    };
    let options = match options.resolve() {
        Ok(o) => o,
        Err(e) => {
            say!("{e}");
            return ExitCode::from(UNKNOWN);
        }
    };
    match health_checker::check(&options) {
        Ok(Verdict::Healthy) => ExitCode::from(OK),
        Ok(Verdict::Unhealthy { .. }) => {
            say!("{}", health_checker::unhealthy_line(&options));
            ExitCode::from(NON_OK)
        }
        Err(e) => {
            say!("error checking {} health: {e}", options.component);
            ExitCode::from(UNKNOWN)
        }
    }
}
