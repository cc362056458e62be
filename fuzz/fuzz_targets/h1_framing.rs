//! `cargo fuzz run h1_framing`: the body is `idgate::fuzzing::h1_framing`, which
//! tests/fuzz_corpus.rs also replays over this target's corpus on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate::fuzzing::h1_framing(data));
