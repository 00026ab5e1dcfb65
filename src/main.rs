//! `orderflow`: the command-line entry point (filled in below as the issues land).

fn main() {}
