//! Replays the committed fuzz corpora (`fuzz/corpus/<target>/`) through the same
//! functions the `cargo fuzz` targets run (`idgate::fuzzing`), on stable Rust, so that
//! every input the fuzzer once found interesting (crashes included) is checked by
//! `make test`. A missing or empty corpus fails: a target nobody seeds is not fuzzed.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("fuzz corpus {} is missing: {e}", dir.display()));
    let mut files: Vec<_> = entries
        .map(|e| e.expect("a corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "fuzz corpus {} is empty: seed it (see README.md, Fuzzing)",
        dir.display()
    );
    // Every failing input is named, not only the first (each panic's message is
    // printed above its name).
    let failing: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).expect("a readable corpus file");
            std::panic::catch_unwind(|| run(&data)).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failing.is_empty(),
        "fuzz target {target} fails on {failing:?} (rerun one from the checkout root with: cargo +nightly fuzz run {target} FILE)"
    );
}

#[test]
fn scim_filter() {
    replay("scim_filter", idgate::fuzzing::scim_filter);
}

#[test]
fn scim_patch() {
    replay("scim_patch", idgate::fuzzing::scim_patch);
}

#[test]
fn cookie() {
    replay("cookie", idgate::fuzzing::cookie);
}

#[test]
fn routing_path() {
    replay("routing_path", idgate::fuzzing::routing_path);
}

#[test]
fn h1_framing() {
    replay("h1_framing", idgate::fuzzing::h1_framing);
}

#[test]
fn saml_response() {
    replay("saml_response", idgate::fuzzing::saml_response);
}

#[test]
fn config() {
    replay("config", idgate::fuzzing::config);
}
