//! `std::io::copy` into another process and back, over a subring byte stream.
//!
//! ```sh
//! cargo run --release --example stream_copy [FILE]
//! ```
//! Starts a subsystem in a child process (this program, re-executed with `--serve`) that keeps
//! what it is sent and sends it all back once the sender finishes. The parent pipes FILE (or 64
//! MiB of generated data) into it with `std::io::copy`, then copies the answer back out with
//! `std::io::copy` again, checks that the bytes came back unchanged, and prints the throughput.
//! Nothing here knows about rings: `Stream` is `Read + Write + BufRead`.

use std::io::{self, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use subring::shm::stream::{ByteService, Stream, StreamHandler, STREAM_PROTOCOL};
use subring::shm::{ClientOptions, Server, ServerConfig};

/// Keeps everything, returns it when the client finishes.
#[derive(Default)]
struct Keep(Vec<u8>);

impl ByteService for Keep {
    fn data(&mut self, input: &[u8], _out: &mut Vec<u8>) {
        self.0.extend_from_slice(input);
    }
    fn finish(&mut self, out: &mut Vec<u8>) {
        out.append(&mut self.0);
    }
}

fn serve(path: &str) -> Result<(), Box<dyn std::error::Error>> {
    let mut server = Server::bind(path, ServerConfig::new(STREAM_PROTOCOL), |_| {
        StreamHandler::new(Keep::default())
    })?;
    // Serve until the parent has connected and gone again (or a minute passes).
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(60) {
        server.run_for(Duration::from_millis(20))?;
        let s = server.stats();
        if s.welcomed > 0 && s.clients == 0 {
            break;
        }
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--serve") {
        return serve(args.get(2).ok_or("--serve needs a socket path")?);
    }
    let input = match args.get(1) {
        Some(file) => std::fs::read(file).map_err(|e| format!("cannot read {file}: {e}"))?,
        None => (0..64u32 << 20)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect(),
    };
    let path = std::env::temp_dir().join(format!("subring-stream-{}.sock", std::process::id()));
    let path_str = path.display().to_string();
    let mut child = Command::new(std::env::current_exe()?)
        .args(["--serve", &path_str])
        .stdin(Stdio::null())
        .spawn()?;
    let options = ClientOptions::new(STREAM_PROTOCOL).buffers(64 << 10, 32);
    let start = Instant::now();
    let mut stream = loop {
        match Stream::connect(&path, &options) {
            Ok(s) => break s,
            Err(_) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e.into());
            }
        }
    };
    stream.set_timeout(Some(Duration::from_secs(30)));

    let t = Instant::now();
    let sent = io::copy(&mut &input[..], &mut stream)?;
    stream.finish()?;
    let t_in = t.elapsed();
    let mut output = Vec::with_capacity(input.len());
    let t = Instant::now();
    let received = io::copy(&mut stream, &mut output)?;
    let t_out = t.elapsed();
    drop(stream);
    let status = child.wait()?;

    let mib = |n: u64, d: Duration| n as f64 / (1 << 20) as f64 / d.as_secs_f64();
    println!(
        "sent {sent} bytes with io::copy in {:.1} ms ({:.0} MiB/s), got {received} back in {:.1} ms ({:.0} MiB/s)",
        t_in.as_secs_f64() * 1e3,
        mib(sent, t_in),
        t_out.as_secs_f64() * 1e3,
        mib(received, t_out),
    );
    if output != input {
        return Err("the bytes that came back differ from those sent".into());
    }
    if !status.success() {
        return Err(format!("server process failed: {status}").into());
    }
    println!("round trip through the other process: identical");
    let _ = io::stdout().flush();
    Ok(())
}
