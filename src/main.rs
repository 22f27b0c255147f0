//! The `npd-ext` multi-call binary: argv[0] or the first argument picks the applet.

use std::ffi::OsString;
use std::process::ExitCode;

use clap::Parser;
use npd_ext::cli::{APPLETS, Applet, Invocation};
use npd_ext::{cmd, logging};

fn main() -> ExitCode {
    let invocation = match Invocation::try_parse_from(normalise_argv0(std::env::args_os())) {
        Ok(i) => i,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(2));
        }
    };
    let applet = match invocation {
        Invocation::NpdExt { applet } | Invocation::Applet(applet) => applet,
    };
    logging::init(applet.log_format(), applet.default_log_level());
    npd_ext::supervisor::log_panics();
    match applet {
        Applet::ValidateConfig(args) => cmd::validate_config::run(&args),
        Applet::Probe(args) => run_async(Runtime::OneThread, || cmd::probe::run(args)),
        Applet::Detector(args) => {
            run_async(Runtime::OneThread, || report(cmd::detector::run(args)))
        }
        Applet::GpuMonitor(args) => {
            run_async(Runtime::TwoWorkers, || report(cmd::gpu_monitor::run(args)))
        }
        Applet::Demo(args) => run_async(Runtime::TwoWorkers, || report(cmd::demo::run(args))),
        Applet::HealthChecker(args) => cmd::health_checker::run(args),
        Applet::LogCounter(args) => cmd::log_counter::run(args),
        Applet::PrepareDir(args) => match cmd::prepare_dir::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Any argv[0] that is not an applet's name behaves as `npd-ext`.
fn normalise_argv0(mut args: impl Iterator<Item = OsString>) -> Vec<OsString> {
    let argv0 = args.next().unwrap_or_default();
    let name = std::path::Path::new(&argv0)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let name = if APPLETS.contains(&name) {
        name
    } else {
        "npd-ext"
    };
    std::iter::once(OsString::from(name)).chain(args).collect()
}

/// Which tokio scheduler an applet runs on.
enum Runtime {
    /// Every task on the calling thread. The detector's tasks mostly wait;
    /// on one thread a wake-up runs its task there and then, where two
    /// workers hand it to each other (futex, eventfd): with the GPU monitor
    /// attached, 0.9 against 0.6 wake-ups a second (docs/performance.md).
    /// Its log followers and blocking work have their own threads anyway.
    OneThread,
    /// Two workers: enough for a node agent, and it keeps a 200-core node
    /// from paying for 200 idle threads.
    TwoWorkers,
}

fn run_async<F, Fut>(runtime: Runtime, f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = ExitCode>,
{
    let mut builder = match runtime {
        Runtime::OneThread => tokio::runtime::Builder::new_current_thread(),
        Runtime::TwoWorkers => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(2);
            b
        }
    };
    match builder.enable_all().build() {
        Ok(rt) => rt.block_on(f()),
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn report(result: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    match result.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
