//! `tests/fixtures/bearer/jwt_tool.py` (PyJWT and `cryptography`): JWKS documents and
//! JWTs made by a tool independent of idgate's own signer, for tests/bearer.rs and the
//! proxy benchmark's bearer target.

use std::process::Command;

/// Runs the tool with `args` and returns what it printed, trimmed; fails loudly when
/// Python or its packages (installed by `make deps`) are missing.
pub fn jwt_tool(args: &[&str]) -> String {
    let out = Command::new("python3")
        .arg(format!(
            "{}/tests/fixtures/bearer/jwt_tool.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args(args)
        .output()
        .expect("python3 is installed by `make deps`");
    assert!(
        out.status.success(),
        "jwt_tool {args:?} (needs PyJWT and cryptography, installed by `make deps`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
