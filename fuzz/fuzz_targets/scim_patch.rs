//! `cargo fuzz run scim_patch`: the body is `idgate::fuzzing::scim_patch`, which
//! tests/fuzz_corpus.rs also replays over this target's corpus on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate::fuzzing::scim_patch(data));
