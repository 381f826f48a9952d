//! The `trellis2` binary: parse arguments, run one command, map the outcome to an exit code.

mod cli;

use std::process::ExitCode;

use clap::Parser;
use cli::{exit, Cli, Command};

fn main() -> ExitCode {
    restore_default_sigpipe();
    let cli = Cli::parse();
    // A bad tuning variable is a usage error, reported once before any work.
    if let Err(err) = trellis2::ops::tuning::Tuning::from_env() {
        eprintln!("error: {err}");
        return ExitCode::from(exit::UNREADABLE);
    }
    let result = match cli.command {
        Command::Generate(args) => cli::generate::run(&args),
        Command::Texture(args) => cli::texture::run(&args),
        Command::Preprocess(args) => cli::preprocess::run(&args),
        Command::Inspect(args) => cli::inspect::run(&args),
        Command::Matte(args) => cli::matte::run(&args),
        Command::Compare(args) => cli::compare::run(&args),
        Command::Render(args) => cli::render::run(&args),
        Command::Convert(args) => cli::convert::run(&args),
        Command::Download(args) => cli::download::run(&args),
        Command::Selftest(args) => cli::selftest::run(&args),
        Command::Dev(cmd) => cli::dev::run(&cmd),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            // One line: the error chain joined with ": ", the path first.
            eprintln!("error: {err:#}");
            ExitCode::from(cli::exit_code_of(&err))
        }
    }
}

/// Output piped into `head` (or any reader that closes early) ends the process quietly, as it does
/// for other Unix tools. Rust ignores SIGPIPE by default, which turns such a write into an
/// EPIPE error and `println!` into a panic. Sockets are unaffected: the standard library sends
/// with `MSG_NOSIGNAL` on Linux and sets `SO_NOSIGPIPE` on macOS.
#[cfg(unix)]
fn restore_default_sigpipe() {
    // SAFETY: called first thing in `main`, before any other thread exists; SIG_DFL is a valid
    // disposition for SIGPIPE.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

#[cfg(not(unix))]
fn restore_default_sigpipe() {}
