//! The container image's runtime stage holds every shared library idgate loads:
//! `tests/runtime-libs.sh` checks the Dockerfile's runtime package list against `ldd` of
//! the binaries built here (see the script for how). These tests run it, print its
//! report, and show that it does fail when a package is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

fn manifest(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The binary cargo built for these tests and, when there is one, the release build
/// next to it: the script checks the union of their libraries and reports whether the
/// two link the same set. `make test` builds the release binary first and sets
/// `IDGATE_REQUIRE_RELEASE=1`, so there the release build (what the image ships) is
/// always checked.
fn binaries() -> Vec<PathBuf> {
    let built = PathBuf::from(env!("CARGO_BIN_EXE_idgate"));
    let mut out = vec![built.clone()];
    let release = built
        .parent()
        .and_then(Path::parent)
        .map(|target| target.join("release").join("idgate"));
    match release {
        Some(r) if r.is_file() && r != built => out.push(r),
        _ => assert!(
            std::env::var_os("IDGATE_REQUIRE_RELEASE").is_none(),
            "IDGATE_REQUIRE_RELEASE is set but target/release/idgate is missing: run `make test`"
        ),
    }
    out
}

/// Runs the script on `dockerfile`: (success, stdout + stderr).
fn run(dockerfile: &Path) -> (bool, String) {
    let out = Command::new("bash")
        .arg(manifest("tests/runtime-libs.sh"))
        .arg("--dockerfile")
        .arg(dockerfile)
        .args(binaries())
        .output()
        .expect("run bash tests/runtime-libs.sh");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[test]
fn the_runtime_image_has_every_library_idgate_loads() {
    let (ok, report) = run(&manifest("Dockerfile"));
    println!("{report}");
    assert!(ok, "tests/runtime-libs.sh failed:\n{report}");
    assert!(report.contains("libxmlsec1-openssl"), "{report}");
}

/// A copy of the Dockerfile with `edit` applied to its lines.
fn edited(dir: &Path, name: &str, edit: impl Fn(&str) -> Option<String>) -> PathBuf {
    let text = std::fs::read_to_string(manifest("Dockerfile")).expect("read Dockerfile");
    let copy = text.lines().filter_map(edit).collect::<Vec<_>>().join("\n") + "\n";
    assert_ne!(
        copy, text,
        "{name}: the edit changed nothing; has the Dockerfile's package list moved?"
    );
    let path = dir.join(name);
    std::fs::write(&path, copy).expect("write Dockerfile copy");
    path
}

#[test]
fn the_check_fails_when_the_runtime_list_is_wrong() {
    let dir = tempfile::tempdir().unwrap();

    // A library package left out of the runtime stage.
    let missing = edited(dir.path(), "Dockerfile.missing", |l| {
        (l.trim() != "libxmlsec1-openssl \\").then(|| l.to_owned())
    });
    let (ok, report) = run(&missing);
    assert!(!ok, "must fail without libxmlsec1-openssl:\n{report}");
    assert!(
        report.contains(
            "comes from package 'libxmlsec1-openssl', which is neither in the runtime stage's apt-get install"
        ),
        "{report}"
    );

    // A package that does not exist, and one idgate does not need.
    let extra = edited(dir.path(), "Dockerfile.extra", |l| {
        Some(if l.trim() == "libxslt1.1 \\" {
            format!("{l}\n      libxmlsec-nonexistent \\\n      ca-certificates \\")
        } else {
            l.to_owned()
        })
    });
    let (ok, report) = run(&extra);
    assert!(
        !ok,
        "must fail with unknown or unneeded packages:\n{report}"
    );
    assert!(
        report.contains("runtime package 'libxmlsec-nonexistent' does not exist"),
        "{report}"
    );
    assert!(
        report.contains("runtime package 'ca-certificates' provides none of the libraries"),
        "{report}"
    );
}
