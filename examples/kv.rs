//! Your own subsystem: a key-value store in another process, whose values cross in shared
//! buffers without a copy on the way. A protocol, a server side and a client side.
//!
//! ```sh
//! cargo run --release --example kv
//! ```
//! The program starts itself again as the server (a child process), is its client, and reaps
//! it. `kv serve PATH` runs only the server.

use std::collections::HashMap;
use std::error::Error;
use std::time::Duration;

use subring::queue::Submitter;
use subring::shm::{BufHandle, Client, ClientInfo, ClientOptions, Ctx, Server, ServerConfig};

// The protocol: what both sides agree on. Entries are plain old data: any bytes a peer writes
// are a valid value, so reading one is never undefined behaviour.
const PROTOCOL: &str = "kv/1";

#[derive(Clone, Copy, Debug, PartialEq, Eq, subring::Pod, subring::Zeroable)]
#[bytemuck(crate = "subring::bytemuck")]
#[repr(transparent)]
struct Op(u32);

impl Op {
    const PUT: Op = Op(1);
    const GET: Op = Op(2);
}

/// PUT lends a buffer holding the value; GET lends an empty one for the value to land in.
#[derive(Clone, Copy, Debug, subring::Pod, subring::Zeroable)]
#[bytemuck(crate = "subring::bytemuck")]
#[repr(C)]
struct Req {
    key: u64,
    op: Op,
    reserved: u32,
    buf: BufHandle,
}

/// The lent buffer comes back in `buf`, its length that of the value (GET).
#[derive(Clone, Copy, Debug, subring::Pod, subring::Zeroable)]
#[bytemuck(crate = "subring::bytemuck")]
#[repr(C)]
struct Resp {
    key: u64,
    found: u32,
    reserved: u32,
    buf: BufHandle,
}

// The server side: one store for every client, on the server's thread.
struct Store(HashMap<u64, Vec<u8>>);

impl subring::shm::Service<Req, Resp> for Store {
    type Client = ();
    fn connect(&mut self, _: &ClientInfo) {}
    fn request(&mut self, _: &mut (), ctx: &mut Ctx<'_, Resp>, req: Req) {
        let (mut found, mut len) = (0, 0);
        if req.op == Op::PUT {
            // The client's bytes, read where they lie (copied once, into the store).
            if let Ok(value) = ctx.payload(req.buf) {
                found = self.0.insert(req.key, value.to_vec()).is_some() as u32;
            }
        } else if let Some(value) = self.0.get(&req.key).filter(|_| req.op == Op::GET) {
            // The value, written straight into the buffer the client lent.
            (found, len) = (1, ctx.write(req.buf, value).unwrap_or(0) as u32);
        }
        ctx.complete(Resp {
            key: req.key,
            found,
            reserved: 0,
            buf: BufHandle { len, ..req.buf },
        });
    }
}

fn serve(path: &str) -> Result<(), Box<dyn Error>> {
    let mut config = ServerConfig::new(PROTOCOL);
    config.exit_when_empty = true; // this demo's server leaves with its last client
    Server::bind_service(path, config, Store(HashMap::new()))?.run()?;
    Ok(())
}

// The client side.
fn client(mut kv: Client<Req, Resp>) -> Result<(), Box<dyn Error>> {
    let mut request = |key, op, value: &[u8]| -> Result<(Resp, Vec<u8>), Box<dyn Error>> {
        let mut buf = kv.alloc().ok_or("no free buffer")?;
        buf.fill_from(value);
        if op == Op::GET {
            buf.set_len(buf.capacity()); // room for the answer
        }
        kv.push(Req {
            key,
            op,
            reserved: 0,
            buf: buf.lend(),
        })?;
        kv.submit()?;
        // The buffer comes home as an owned value: dropped, it returns to the pool.
        let (resp, buf) = kv.wait_reap_buf(Duration::from_secs(5), |r| r.buf)?;
        Ok((resp, buf.to_vec()))
    };
    for (key, value) in [(1, "one"), (2, "two"), (2, "deux")] {
        let (resp, _) = request(key, Op::PUT, value.as_bytes())?;
        println!("put {key} = {value:?}, replaced: {}", resp.found == 1);
    }
    for key in [1, 2, 3] {
        let (resp, value) = request(key, Op::GET, b"")?;
        let value = String::from_utf8_lossy(&value);
        println!("get {key}: found {}, value {value:?}", resp.found == 1);
    }
    Ok(())
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().collect();
    if let [_, serve_arg, path] = &args[..] {
        if serve_arg == "serve" {
            return serve(path);
        }
    }
    let dir = std::env::temp_dir().join(format!("subring-kv-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("kv.sock").display().to_string();
    let mut server = std::process::Command::new(std::env::current_exe()?)
        .args(["serve", &path])
        .spawn()?;
    // Connect once the server listens (until then the path is missing or refuses: a bounded
    // retry), then talk to it.
    let start = std::time::Instant::now();
    let result = loop {
        match Client::connect(&path, &ClientOptions::new(PROTOCOL)) {
            Err(subring::shm::Error::Path { .. }) if start.elapsed() < Duration::from_secs(10) => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Ok(kv) => break client(kv),
            Err(e) => break Err(e.into()),
        }
    };
    if result.is_err() {
        server.kill()?;
    }
    let status = server.wait()?;
    std::fs::remove_dir_all(&dir)?;
    result?;
    if !status.success() {
        return Err(format!("the server exited with {status}").into());
    }
    Ok(())
}
