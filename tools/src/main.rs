//! `walship`: the operator's command line for walship clusters.
//!
//! One subcommand per module under `cmd/`. Each `run` writes its output to the writer it
//! is given and returns how it ended; this file turns that into an exit code
//! ([`walship_tools::outcome`]).

mod cmd;

use std::io;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// walship: run and operate a walship replication cluster
#[derive(Debug, Parser)]
#[command(name = "walship", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Demo(cmd::demo::Args),
    Certs(cmd::certs::Args),
    Inspect(cmd::inspect::Args),
    Dump(cmd::dump::Args),
    Verify(cmd::verify::Args),
    Serve(cmd::serve::Args),
    Status(cmd::status::Args),
    Lag(cmd::lag::Args),
    Promote(cmd::promote::Args),
    Append(cmd::append::Args),
    Slot(cmd::slot::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut out = io::BufWriter::new(io::stdout().lock());
    let result = match &cli.command {
        Command::Demo(args) => cmd::demo::run(args, &mut out),
        Command::Certs(args) => cmd::certs::run(args, &mut out),
        Command::Inspect(args) => cmd::inspect::run(args, &mut out),
        Command::Dump(args) => cmd::dump::run(args, &mut out),
        Command::Verify(args) => cmd::verify::run(args, &mut out),
        Command::Serve(args) => cmd::serve::run(args, &mut out),
        Command::Status(args) => cmd::status::run(args, &mut out),
        Command::Lag(args) => cmd::lag::run(args, &mut out),
        Command::Promote(args) => cmd::promote::run(args, &mut out),
        Command::Append(args) => cmd::append::run(args, &mut out),
        Command::Slot(args) => cmd::slot::run(args, &mut out),
    };
    walship_tools::outcome::finish("walship", result, &mut out)
}
