//! `subring bench`: the comparison suite of `subring-bench`, with a progress bar, a table,
//! JSON and an SVG chart.

use std::fs::File;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use subring_bench::report::Report;
use subring_bench::{coalesce, ipc, kernel, net, plot, spsc, storage, xdp, Progress};

use crate::Error;

/// The sections `--only` can pick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// SPSC ring throughput: subring vs rtrb vs crossbeam.
    Spsc,
    /// Cross-process round trips and 4 KiB payloads.
    Ipc,
    /// Bursts of requests completed one at a time: event-idx suppression against the
    /// sleeping flag alone.
    Burst,
    /// The kernel transport vs raw io-uring vs pread.
    Kernel,
    /// The block service (reads landing in the client's memory) vs local io_uring, a
    /// Unix-socket server and a copying service.
    Storage,
    /// A TCP echo service on loopback: subring's kernel transport vs an epoll loop, tokio, and
    /// (with the `runtimes` feature) tokio-uring and compio.
    Net,
    /// Receiving on a veth pair: subring-xdp vs AF_PACKET v3 vs recvmmsg (root and
    /// iproute2; skipped without them).
    Xdp,
    /// iceoryx2's publish-subscribe round trip (needs the `iceoryx2` feature).
    Iceoryx2,
}

/// `subring bench` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// A short run (under two minutes on 2 cores).
    #[arg(long)]
    quick: bool,
    /// Write the results as JSON to this file.
    #[arg(long, value_name = "PATH")]
    json: Option<PathBuf>,
    /// Write an SVG chart of the latency distributions and ratios to this file.
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
    /// Run only these sections, comma-separated (default: all that were built).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "SECTION[,SECTION...]"
    )]
    only: Vec<Part>,
}

/// A progress bar on a terminal; nothing otherwise.
struct Bar(ProgressBar);

impl Progress for Bar {
    fn begin(&mut self, section: &str, steps: u64) {
        self.0.inc_length(steps);
        self.0.set_prefix(section.to_string());
    }
    fn step(&mut self, what: &str) {
        self.0.inc(1);
        self.0.set_message(what.to_string());
    }
}

fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown kernel".into(), |s| s.trim().to_string());
    format!("{cpus} CPUs ({model}), Linux {kernel}")
}

/// Where an output is written first: renamed to `path` once whole, so that a run that fails
/// leaves an earlier file at `path` as it was.
fn partial(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".partial-{}", std::process::id()));
    name.into()
}

/// Checks now that an output can be written beside `path` (so that a bad path fails before the
/// run), without touching a file already there.
fn check_output(path: &Option<PathBuf>, what: &str) -> Result<(), Error> {
    if let Some(p) = path {
        let tmp = partial(p);
        File::create(&tmp)
            .and_then(|_| std::fs::remove_file(&tmp))
            .map_err(|e| format!("cannot write the {what} to {}: {e}", p.display()))?;
    }
    Ok(())
}

/// Writes an output through `write` into its partial file, then renames it to `path`.
fn write_output(path: &Path, write: impl FnOnce(&Path) -> Result<(), Error>) -> Result<(), Error> {
    let tmp = partial(path);
    if let Err(e) = write(&tmp) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("renaming {} to {}: {e}", tmp.display(), path.display()).into())
}

pub fn run(args: &Args) -> Result<(), Error> {
    if !cfg!(feature = "iceoryx2") && args.only.contains(&Part::Iceoryx2) {
        return Err("iceoryx2 was not built: run with `--features iceoryx2`".into());
    }
    check_output(&args.json, "JSON results")?;
    check_output(&args.plot, "chart")?;
    let wants = |p: Part| args.only.is_empty() || args.only.contains(&p);
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>6} [{bar:30}] {pos}/{len} {elapsed} {msg}")
                .map_err(|e| e.to_string())?
                .progress_chars("=> "),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let mut progress = Bar(bar);
    let mut report = Report {
        machine: machine(),
        quick: args.quick,
        ..Report::default()
    };
    let start = Instant::now();
    // Order matters: the ipc section forks, so it runs while this process has one thread
    // (every earlier section joins its threads; the io_uring runtimes may leave some behind).
    if wants(Part::Spsc) {
        spsc::run(
            &spsc::SpscConfig::new(args.quick),
            &mut report,
            &mut progress,
        )?;
    }
    if wants(Part::Burst) {
        coalesce::run(
            &coalesce::CoalesceConfig::new(args.quick),
            &mut report,
            &mut progress,
        )?;
    }
    if wants(Part::Ipc) {
        ipc::run(&ipc::IpcConfig::new(args.quick), &mut report, &mut progress)?;
    }
    // Forks its servers too: also while single-threaded.
    if wants(Part::Storage) {
        storage::run(
            &storage::StorageConfig::new(args.quick),
            &mut report,
            &mut progress,
        )?;
    }
    // Forks its servers too.
    if wants(Part::Net) {
        net::run(&net::NetConfig::new(args.quick), &mut report, &mut progress)?;
    }
    if wants(Part::Xdp) {
        xdp::run(&xdp::XdpConfig::new(args.quick), &mut report, &mut progress)?;
    }
    #[cfg(feature = "iceoryx2")]
    if wants(Part::Iceoryx2) {
        subring_bench::iceoryx::run(
            &subring_bench::iceoryx::IceoryxConfig::new(args.quick),
            &mut report,
            &mut progress,
        )?;
    }
    #[cfg(not(feature = "iceoryx2"))]
    if wants(Part::Iceoryx2) {
        report.skipped.push((
            "iceoryx2 round trip".into(),
            "built without the `iceoryx2` feature".into(),
        ));
    }
    if wants(Part::Kernel) {
        kernel::run(
            &kernel::KernelConfig::new(args.quick),
            &mut report,
            &mut progress,
        )?;
    }
    progress.0.finish_and_clear();
    println!("{}", report.table());
    println!(
        "{} run, {:.0} s",
        if args.quick { "quick" } else { "full" },
        start.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.json {
        write_output(path, |tmp| {
            let file = File::create(tmp).map_err(|e| format!("creating {}: {e}", tmp.display()))?;
            let mut out = std::io::BufWriter::new(file);
            serde_json::to_writer_pretty(&mut out, &report)
                .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            std::io::Write::flush(&mut out)
                .map_err(|e| format!("writing {}: {e}", tmp.display()))?;
            Ok(())
        })?;
        println!("results: {}", path.display());
    }
    if let Some(path) = &args.plot {
        write_output(path, |tmp| Ok(plot::write_svg(&report, tmp)?))?;
        println!("chart: {}", path.display());
    }
    Ok(())
}
