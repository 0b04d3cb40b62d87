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

/// The lent buffer comes back in `buf`, holding the value (GET). `found`: the key was there
/// (PUT: its value was replaced). `status`: `OK`, or `REFUSED`: a buffer the server could not
/// use, a GET's buffer too short for the value, or a PUT the store has no room for.
#[derive(Clone, Copy, Debug, subring::Pod, subring::Zeroable)]
#[bytemuck(crate = "subring::bytemuck")]
#[repr(C)]
struct Resp {
    key: u64,
    found: u32,
    status: u32,
    buf: BufHandle,
}

const OK: u32 = 0;
const REFUSED: u32 = 1;

impl Req {
    fn new(key: u64, op: Op, buf: BufHandle) -> Req {
        Req {
            key,
            op,
            reserved: 0,
            buf,
        }
    }
}

impl Resp {
    /// The answer to `req`, its buffer holding `len` bytes.
    fn to(req: &Req, found: bool, status: u32, len: usize) -> Resp {
        let buf = BufHandle {
            len: len as u32,
            ..req.buf
        };
        Resp {
            key: req.key,
            found: found as u32,
            status,
            buf,
        }
    }
}

// The server side: one store for every client, on the server's thread.
/// The most bytes the store holds: a PUT that would grow it past this is refused.
const STORE_BYTES: usize = 64 << 20;
struct Store(HashMap<u64, Vec<u8>>, usize);

impl subring::shm::Service<Req, Resp> for Store {
    type Client = ();
    fn connect(&mut self, _: &ClientInfo) {}
    fn request(&mut self, _: &mut (), ctx: &mut Ctx<'_, Resp>, req: Req) {
        let found = self.0.contains_key(&req.key);
        let (mut status, mut len) = (REFUSED, 0);
        if req.op == Op::PUT {
            // The client's bytes, read where they lie (copied once, into the store). An entry
            // costs its value and 64 bytes besides (the map's own), empty values included.
            let room = STORE_BYTES - self.1 + self.0.get(&req.key).map_or(0, |v| 64 + v.len());
            if let Some(value) = ctx.payload(req.buf).ok().filter(|v| 64 + v.len() <= room) {
                (self.1, status) = (STORE_BYTES - room + 64 + value.len(), OK);
                self.0.insert(req.key, value.to_vec());
            }
        } else if req.op == Op::GET {
            // The value, written straight into the buffer the client lent, if it fits whole.
            let value = self.0.get(&req.key).map_or(&[][..], Vec::as_slice);
            if ctx.write(req.buf, value).is_ok_and(|n| n == value.len()) {
                (status, len) = (OK, value.len());
            }
        }
        ctx.complete(Resp::to(&req, found, status, len));
    }
}

fn serve(path: &str) -> Result<(), Box<dyn Error>> {
    let mut config = ServerConfig::new(PROTOCOL);
    config.exit_when_empty = true; // this demo's server leaves with its last client
    Server::bind_service(path, config, Store(HashMap::new(), 0))?.run()?;
    Ok(())
}

// The client side.
fn client(mut kv: Client<Req, Resp>) -> Result<(), Box<dyn Error>> {
    let mut request = |key, op, value: &[u8]| -> Result<(Resp, Vec<u8>), Box<dyn Error>> {
        let mut buf = kv.alloc().ok_or("no free buffer")?;
        if op == Op::GET {
            buf.set_len(buf.capacity()); // room for the answer
        } else if buf.fill_from(value) < value.len() {
            return Err("the value is longer than a buffer".into());
        }
        // Lent once the ring has taken the request (a full ring hands both back), ...
        kv.push_lending(buf, |buf| Req::new(key, op, buf))?;
        kv.submit()?;
        // ... and home with the answer as an owned value: dropped, it returns to the pool.
        let (resp, buf) = kv.wait_reap_buf(Duration::from_secs(5), |r| r.buf)?;
        match resp.status {
            OK => Ok((resp, buf.to_vec())),
            _ => Err(format!("the server refused a request for key {key}").into()),
        }
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
    // A directory of this user's alone, made anew (it fails if another user made it first).
    let dir = std::env::temp_dir().join(format!("subring-kv-{}", std::process::id()));
    std::os::unix::fs::DirBuilderExt::mode(&mut std::fs::DirBuilder::new(), 0o700).create(&dir)?;
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
            // The server is the child, by the kernel's word (a listener someone else put at the
            // path would be told apart here).
            Ok(kv) if kv.server_pid() == server.id() => break client(kv),
            Ok(kv) => break Err(format!("{path} is served by process {}", kv.server_pid()).into()),
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
