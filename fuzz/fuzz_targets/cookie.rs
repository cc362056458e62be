//! `cargo fuzz run cookie`: the body is `idgate::fuzzing::cookie`, which
//! tests/fuzz_corpus.rs also replays over this target's corpus on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate::fuzzing::cookie(data));
