#![forbid(unsafe_code)]

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = ferrolb_speaker::app::Args::parse();
    match ferrolb_speaker::app::run(args).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ferrolb-speaker: {}", e.chain());
            std::process::ExitCode::FAILURE
        }
    }
}
