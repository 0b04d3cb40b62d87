//! The README's "Your own subsystem" shows code from `examples/kv.rs`: every Rust block there
//! must appear in the example verbatim, so that what a newcomer reads is what CI compiles and
//! runs (`cargo run --release --example kv`).

const README: &str = include_str!("../README.md");
const EXAMPLE: &str = include_str!("../examples/kv.rs");

fn rust_blocks(section: &str) -> Vec<&str> {
    let mut blocks = Vec::new();
    let mut rest = section;
    while let Some(start) = rest.find("```rust") {
        let body = &rest[start..];
        let body = &body[body.find('\n').expect("a fence line") + 1..];
        let end = body.find("\n```").expect("a closing fence");
        blocks.push(&body[..end]);
        rest = &body[end + 4..];
    }
    blocks
}

#[test]
fn the_readme_shows_the_kv_example_verbatim() {
    let start = README
        .find("## Your own subsystem")
        .expect("the README has the section");
    let section = &README[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    let blocks = rust_blocks(section);
    assert_eq!(blocks.len(), 3, "protocol, server and client");
    for block in blocks {
        assert!(
            EXAMPLE.contains(block),
            "this README block is not in examples/kv.rs:\n{block}"
        );
    }
}

#[test]
fn each_side_fits_in_thirty_lines() {
    let start = README.find("## Your own subsystem").unwrap();
    let blocks = rust_blocks(&README[start..]);
    for (side, block) in ["server", "client"].iter().zip(&blocks[1..3]) {
        let code = block
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with("//"))
            .count();
        assert!(code <= 30, "the {side} side has {code} lines of code");
    }
}
