//! `cargo fuzz run scim_filter`: the body is `idgate::fuzzing::scim_filter`, which
//! tests/fuzz_corpus.rs also replays over this target's corpus on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate::fuzzing::scim_filter(data));
