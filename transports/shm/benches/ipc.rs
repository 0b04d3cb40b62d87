//! Cross-process benchmark (in progress).
fn main() {}
