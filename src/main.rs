mod cli;

use std::process::ExitCode;

use clap::Parser;
use gradscope::{Application, healthcheck, local, store, telemetry, worker};

use self::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    let command = match cli.command {
        Command::Worker(args) => {
            // Stdout carries the reports: the log goes to stderr, which the service keeps.
            telemetry::init_stderr(cli.log.as_deref().unwrap_or(default_log));
            // Exits at once: the blocking read of stdin cannot be cancelled.
            std::process::exit(worker::run(&args.into()).await);
        }
        command => command,
    };
    telemetry::init(cli.log.as_deref().unwrap_or(default_log), cli.log_json);
    match run(command).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("gradscope: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => {
            let app = Application::build(args.into()).await?;
            app.run_until(telemetry::shutdown_signal()).await?;
        }
        Command::Migrate(db) => {
            let store = store::Store::connect(&db.database_url).await?;
            store.migrate().await?;
            println!("migrations applied to {}", db.database_url);
        }
        Command::Healthcheck(args) => return healthcheck::check(&args.url).await,
        Command::Run(args) => return local::run(&args.into()).await,
        // Handled in `main`, before logging is set up for the other commands.
        Command::Worker(args) => std::process::exit(worker::run(&args.into()).await),
    }
    Ok(ExitCode::SUCCESS)
}
