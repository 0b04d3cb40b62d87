//! The 8-byte, one-at-a-time SPSC stream through subring's indexed ring, its stamped ring and
//! rtrb, measured in turn eight times (5,000,000 entries each), printing each turn's rates and
//! the indexed ring's ratio to rtrb: a quick look at the row of `subring bench --only spsc`
//! whose goal is hardest, within one placement of the two threads.
//!
//! ```sh
//! cargo run --release -p subring-bench --example spsc_single
//! ```

fn main() {
    for _ in 0..8 {
        match subring_bench::spsc::single_entry_rates(5_000_000) {
            Ok([(_, indexed), (_, stamped), (_, rtrb)]) => println!(
                "indexed {:6.1} M/s  stamped {:6.1} M/s  rtrb {:6.1} M/s  indexed/rtrb {:.2}",
                indexed / 1e6,
                stamped / 1e6,
                rtrb / 1e6,
                indexed / rtrb
            ),
            Err(e) => {
                eprintln!("spsc_single: {e}");
                std::process::exit(1);
            }
        }
    }
}
