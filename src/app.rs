//! Parse arguments, set up logging and the runtime, dispatch to a command, map the exit code.

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands;
use crate::exit::Exit;
use crate::ui::Ui;

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.global.verbose);
    let ui = Ui::new(cli.global.json);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            ui.error(&anyhow::anyhow!(e).context("start the async runtime"));
            return Exit::BadInput.into();
        }
    };
    let exit = match runtime.block_on(run(&cli, &ui)) {
        Ok(exit) => exit,
        Err(err) => {
            ui.error(&err);
            Exit::for_error(&err)
        }
    };
    // The ssh master connections this run opened, and their private folder.
    crate::host::mux::close_all();
    exit.into()
}

pub async fn run(cli: &Cli, ui: &Ui) -> anyhow::Result<Exit> {
    if let Some(addr) = cli.global.metrics_listen {
        commands::metrics::serve(addr, commands::spec_path(&cli.global)?)?;
    }
    match &cli.command {
        Command::Validate => commands::validate::run(&cli.global, ui),
        Command::Plan(args) => commands::plan::run(&cli.global, args, ui).await,
        Command::Replicate => commands::replicate::run(&cli.global, ui).await,
        Command::Status(a) => commands::status::run(&cli.global, a, ui).await,
        Command::Watch(a) => commands::watch::run(&cli.global, a, ui).await,
        Command::Resume(args) => commands::resume::run(&cli.global, args, ui).await,
        Command::Complete => commands::complete::run(&cli.global, ui).await,
        Command::Cutover(args) => commands::cutover::run(&cli.global, args, ui).await,
        Command::Rollback => commands::rollback::run(&cli.global, ui).await,
        Command::Failover(args) => commands::failover::run(&cli.global, args, ui).await,
        Command::Resync(args) => commands::resync::run(&cli.global, args, ui).await,
        #[cfg(feature = "failpoints")]
        Command::Drill => commands::drill::run(&cli.global, ui).await,
        Command::Lab { action } => commands::lab::run(action, ui).await,
        Command::Completions { shell } => commands::docs::completions(*shell, ui),
        Command::Man => commands::docs::man(ui),
        Command::Rehearse(args) => commands::rehearse::run(args, ui).await,
    }
}

fn init_tracing(verbose: u8) {
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("MIGRATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("migrate={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| crate::ui::LogWriter)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}
