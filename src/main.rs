mod cli;

use std::process::ExitCode;

use clap::Parser;
use gradscope::{Application, healthcheck, local, store, telemetry};

use self::cli::{Cli, Command};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" };
    telemetry::init(cli.log.as_deref().unwrap_or(default_log), cli.log_json);
    match run(cli.command).await {
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
    }
    Ok(ExitCode::SUCCESS)
}
