#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = ferrolb_controller::app::Args::parse();
    match ferrolb_controller::app::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrolb-controller: {}", e.chain());
            std::process::ExitCode::FAILURE
        }
    }
}
