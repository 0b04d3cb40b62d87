//! The `subring` program: a tour of what subring is for (the default), and the comparison
//! suite that measures subring against what users would otherwise pick.
//!
//! ```text
//! cargo run --release                      # the tour
//! cargo run --release -- tour 2 3          # some of its steps
//! cargo run --release -- bench --quick     # the suite, short
//! cargo run --release -- bench --json out.json --plot out.svg
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod bench;
mod tour;

/// Errors reach `main` as one line.
type Error = Box<dyn std::error::Error>;

/// Talk to a subsystem the way io_uring talks to the kernel.
#[derive(Debug, Parser)]
#[command(name = "subring", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Show what subring does: a userspace subsystem in another process, then the kernel over
    /// io_uring, each beside the classic way, then the two chained (the default).
    Tour {
        /// The steps to take (1: a userspace subsystem, 2: the kernel, 3: the two chained);
        /// every one when none is named.
        #[arg(value_parser = clap::value_parser!(u8).range(1..=3))]
        steps: Vec<u8>,
    },
    /// Measure subring against its peers, interleaved in one run.
    Bench(bench::Args),
    /// The tour's server process (started by the tour itself).
    #[command(hide = true)]
    ServeTour {
        /// subring-shm socket path.
        path: PathBuf,
        /// Classic Unix-socket path.
        unix_path: PathBuf,
        /// Connections to serve before exiting.
        connections: u64,
    },
    /// The tour's storage process (started by the tour itself).
    #[command(hide = true)]
    ServeBlk {
        /// subring-shm socket path.
        path: PathBuf,
        /// The file served as a block device.
        device: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Tour { steps: Vec::new() }) {
        Command::Tour { steps } => tour::run(&steps),
        Command::Bench(args) => bench::run(&args),
        Command::ServeTour {
            path,
            unix_path,
            connections,
        } => tour::serve(&path, &unix_path, connections),
        Command::ServeBlk { path, device } => tour::serve_blk(&path, &device),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("subring: {e}");
            ExitCode::FAILURE
        }
    }
}
