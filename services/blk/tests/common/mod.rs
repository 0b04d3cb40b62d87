//! What the block service's test files share: a temporary device, a local or threaded
//! server, clients that retry while the server starts, a pseudo-random sequence.

// A test file uses some of these, not all.
#![allow(dead_code)]

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use subring_blk::{server, server_config, BlkClient, BlkConfig, BlkOptions, BlkServer};
use subring_shm::socket_pair;

pub const LIMIT: Duration = Duration::from_secs(20);

/// The tests of this file run one at a time: the kill test counts this process's descriptors
/// and mappings, which another test's clients would change under it.
pub static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}
pub const DEVICE: u64 = 8 << 20;

/// A directory for one test, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Under the system temp dir (ext4 here: direct I/O works), or `/dev/shm` (tmpfs: none).
    pub fn new(name: &str, tmpfs: bool) -> Self {
        let base = if tmpfs {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("subring-blk-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    /// A device of pseudo-random bytes (real data: direct reads of it go to the disk and take
    /// a while), and the bytes.
    pub fn random_disk(&self, seed: u64) -> (PathBuf, Vec<u8>) {
        let path = self.0.join("disk.img");
        let mut rng = Rng(seed);
        let data: Vec<u8> = (0..DEVICE).map(|_| rng.next() as u8).collect();
        std::fs::write(&path, &data).unwrap();
        (path, data)
    }

    pub fn disk(&self, len: u64) -> PathBuf {
        let path = self.0.join("disk.img");
        std::fs::File::create(&path).unwrap().set_len(len).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A deterministic pseudo-random sequence (xorshift).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn connect_retry(path: &Path) -> BlkClient {
    connect_retry_with(path, &BlkOptions::new())
}

pub fn connect_retry_with(path: &Path, options: &BlkOptions) -> BlkClient {
    let start = Instant::now();
    loop {
        match BlkClient::connect(path, options) {
            Ok(c) => return c,
            Err(e) if start.elapsed() < LIMIT => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("could not connect to {}: {e}", path.display()),
        }
    }
}

/// The service on a thread of this process and a client over a socket pair.
pub fn local(
    dir: &TempDir,
    tweak: impl FnOnce(&mut BlkConfig),
) -> (
    subring_shm::ServerThread<
        subring_blk::BlkRequest,
        subring_blk::BlkCompletion,
        subring_blk::BlkService,
    >,
    BlkClient,
) {
    let mut blk = BlkConfig::new(dir.disk(DEVICE));
    tweak(&mut blk);
    let (server_end, client_end): (OwnedFd, OwnedFd) = socket_pair().unwrap();
    let mut server = server(server_config(), blk).unwrap();
    server.add_connection(server_end).unwrap();
    let server = server.spawn().unwrap();
    let client = BlkClient::from_socket(client_end, &BlkOptions::new()).unwrap();
    (server, client)
}

/// A server turning on a thread of its own, publishing what the kill test looks at.
pub struct Running {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    seen: std::sync::Arc<std::sync::Mutex<Seen>>,
    thread: Option<std::thread::JoinHandle<BlkServer>>,
}

#[derive(Debug, Clone, Default)]
pub struct Seen {
    pub server: subring_shm::ServerStats,
    pub blk: subring_blk::BlkStats,
    pub blk_clients: usize,
    pub in_flight: usize,
    pub registered: usize,
}

impl Running {
    pub fn start(mut server: BlkServer) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = std::sync::Arc::new(std::sync::Mutex::new(Seen::default()));
        let thread = std::thread::spawn({
            let (stop, seen) = (stop.clone(), seen.clone());
            move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    server.run_for(Duration::from_millis(1)).unwrap();
                    let blk = server.service();
                    *seen.lock().unwrap() = Seen {
                        server: server.stats(),
                        blk: blk.stats(),
                        blk_clients: blk.clients(),
                        in_flight: blk.in_flight(),
                        registered: blk.registered_regions(),
                    };
                }
                server
            }
        });
        Running {
            stop,
            seen,
            thread: Some(thread),
        }
    }

    pub fn seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (bounded) until `what` holds of what the server shows.
    pub fn until(&self, what: &str, mut ok: impl FnMut(&Seen) -> bool) -> Seen {
        let start = Instant::now();
        loop {
            let seen = self.seen();
            if ok(&seen) {
                return seen;
            }
            assert!(start.elapsed() < LIMIT, "{what}: never happened ({seen:?})");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// What the server shows once `ok` holds of it, if it does within `limit` (what it
    /// publishes lags its turns by a millisecond or more).
    pub fn within(&self, limit: Duration, mut ok: impl FnMut(&Seen) -> bool) -> Option<Seen> {
        let start = Instant::now();
        loop {
            let seen = self.seen();
            if ok(&seen) {
                return Some(seen);
            }
            if start.elapsed() > limit {
                return None;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn stop(mut self) -> BlkServer {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A client on a thread of its own that keeps `in_flight` direct reads of 1 MiB (into one
/// buffer) in the service at `socket`, resubmitting each as it completes, until `stop` is set;
/// it then waits for the last and returns how many it read.
pub fn keep_reading(
    socket: &Path,
    options: &BlkOptions,
    in_flight: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let (socket, options) = (socket.to_path_buf(), options.clone());
    std::thread::spawn(move || {
        let mut client = connect_retry_with(&socket, &options);
        let buf = client.alloc().unwrap();
        let whole = subring_shm::BufHandle {
            len: 1 << 20,
            ..buf.handle()
        };
        let (mut sent, mut done) = (0u64, 0u64);
        loop {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && sent - done < in_flight {
                client
                    .raw(sent, 1, (sent << 20) % DEVICE, 1 << 20, whole)
                    .unwrap();
                sent += 1;
            }
            client.submit().unwrap();
            if done == sent {
                return done;
            }
            assert_eq!(client.next(Some(LIMIT)).unwrap().result, Ok(1 << 20));
            done += 1;
        }
    })
}
