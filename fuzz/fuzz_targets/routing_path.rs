//! `cargo fuzz run routing_path`: the body is `idgate::fuzzing::routing_path`, which
//! tests/fuzz_corpus.rs also replays over this target's corpus on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate::fuzzing::routing_path(data));
