use clap::Parser;

use mpr::config::{Command, Config};

// Calls allocate and free kilobyte-sized buffers (payloads, call futures) at a high rate, which
// glibc's allocator spends measurable time consolidating; mimalloc does not.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let config = Config::parse();
    if let Err(problem) = config.check() {
        eprintln!("error: {problem}");
        return std::process::ExitCode::from(2);
    }
    mpr::telemetry::init_logging(&config.log);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = config.server.worker_threads {
        runtime.worker_threads(threads as usize);
    }
    let runtime = runtime.enable_all().build().expect("tokio runtime");
    if let Some(Command::MigrateFromNode(args)) = &config.command {
        return match runtime.block_on(mpr::migrate::run(&config, args)) {
            Ok(report) => {
                println!("{report:?}");
                std::process::ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!("migration stopped: {error:#}; run it again to resume");
                std::process::ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(mpr::server::run(config, mpr::server::shutdown_on_signal())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("server stopped: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
