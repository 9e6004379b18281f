//! `xl-usb`: xl's USB commands for pvusb, a rules daemon, a simulated platform and a demo.

use clap::Parser;
use xl_usb::cli::{self, Args};

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let default = match args.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context first, then causes it does not already say.
            let mut line = String::new();
            for cause in e.chain().map(ToString::to_string) {
                if !line.contains(&cause) {
                    line = if line.is_empty() {
                        cause
                    } else {
                        format!("{line}: {cause}")
                    };
                }
            }
            eprintln!("xl-usb: {}", line.replace('\n', " "));
            std::process::ExitCode::FAILURE
        }
    }
}
