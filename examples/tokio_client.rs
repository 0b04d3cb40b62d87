//! subring clients as tokio tasks (feature `tokio`, on for the examples).
//!
//! ```sh
//! cargo run --release --example tokio_client
//! ```
//! Four tasks on one runtime thread each hold a connection to an echo server (a thread here;
//! another process works the same way) and await their completions: a task sleeps in the
//! runtime's epoll on its client's completion eventfd, never blocking the thread, while a
//! timer task ticks beside them (its longest wait is printed).

use std::time::{Duration, Instant};

use subring::shm::echo::{self, EchoOp, EchoReq, EchoResp, EchoStatus, ECHO_PROTOCOL};
use subring::shm::tokio::AsyncClient;
use subring::shm::{ClientOptions, NotifyMode, Server, ServerConfig};

const TASKS: u64 = 4;
const CALLS: u64 = 5_000;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::temp_dir().join(format!("subring-tokio-{}.sock", std::process::id()));
    let server = Server::bind(
        &path,
        ServerConfig::new(ECHO_PROTOCOL),
        echo::handler_factory(),
    )?
    .spawn()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let start = Instant::now();
    let worst_tick = runtime.block_on(async {
        // A timer beside the clients: the longest gap between its 1 ms ticks shows whether the
        // thread was ever blocked.
        let ticker = tokio::spawn(async {
            let mut worst = Duration::ZERO;
            let mut last = Instant::now();
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                worst = worst.max(last.elapsed());
                last = Instant::now();
            }
            worst
        });
        let mut tasks = Vec::new();
        for task in 0..TASKS {
            let options = ClientOptions::new(ECHO_PROTOCOL).mode(NotifyMode::EventFd);
            let mut client = AsyncClient::<EchoReq, EchoResp>::connect(&path, &options)?;
            tasks.push(tokio::spawn(async move {
                for seq in 0..CALLS {
                    let mut buf = client.client().alloc().ok_or("no free buffer")?;
                    buf.fill_from(format!("task {task} call {seq}").as_bytes());
                    let req = EchoReq {
                        seq,
                        op: EchoOp::UPPER,
                        reserved: 0,
                        buf: buf.lend(),
                    };
                    let answer = client.call(req).await?;
                    let back = client.client().reclaim(answer.buf)?;
                    let want = format!("TASK {task} CALL {seq}");
                    if answer.status != EchoStatus::OK || back.to_vec() != want.as_bytes() {
                        return Err(format!("task {task}: wrong answer to call {seq}").into());
                    }
                }
                Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
            }));
        }
        for t in tasks {
            t.await?.map_err(|e| e.to_string())?;
        }
        Ok::<Duration, Box<dyn std::error::Error>>(ticker.await?)
    })?;
    let took = start.elapsed();
    println!(
        "{TASKS} tasks x {CALLS} checked round trips on one runtime thread in {:.1} ms ({:.1} us \
         each, tasks interleaved); a 1 ms timer beside them never waited more than {:.1} ms",
        took.as_secs_f64() * 1e3,
        took.as_secs_f64() * 1e6 / (TASKS * CALLS) as f64,
        worst_tick.as_secs_f64() * 1e3
    );
    server.stop()?;
    let _ = std::fs::remove_file(&path);
    Ok(())
}
