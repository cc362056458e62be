//! `cargo fuzz run config`: the body is `idgate::fuzzing::config`, which
//! tests/fuzz_corpus.rs also replays over this target's corpus on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate::fuzzing::config(data));
