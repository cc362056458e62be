//! `cargo fuzz run saml_response`: the body is `idgate::fuzzing::saml_response`, which
//! tests/fuzz_corpus.rs also replays over this target's corpus on stable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| idgate::fuzzing::saml_response(data));
