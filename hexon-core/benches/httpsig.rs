//! Benchmarks: placeholder until its owner fills it in.
fn main() {}
