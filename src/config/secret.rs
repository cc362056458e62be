//! Secret references: `"env:NAME"`, `"file:/path"`, or an inline value.
//!
//! Secrets are resolved once, while the config is validated, so that a missing file or
//! variable is reported with its key path before the process serves anything.

use std::fmt;
use std::path::{Path, PathBuf};

/// Where a secret came from. Kept for error messages; never holds the value.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written inline in the config file.
    Inline,
    /// Read from the named environment variable.
    Env(String),
    /// Read from a file (trailing newline trimmed).
    File(PathBuf),
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline => f.write_str("inline"),
            SecretSource::Env(name) => write!(f, "env:{name}"),
            SecretSource::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// A resolved secret value. Its `Debug` never shows the value, so a config dumped into a
/// log line cannot leak it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    source: SecretSource,
    value: String,
}

impl Secret {
    /// Resolves a reference. Relative `file:` paths are taken from `base_dir` (the
    /// config file's directory), so a config and the files it names can move together.
    pub fn resolve(reference: &str, base_dir: &Path) -> Result<Secret, String> {
        if let Some(name) = reference.strip_prefix("env:") {
            if name.is_empty() {
                return Err("empty environment variable name after `env:`".into());
            }
            return match std::env::var(name) {
                Ok(value) if !value.is_empty() => Ok(Secret {
                    source: SecretSource::Env(name.to_owned()),
                    value,
                }),
                Ok(_) => Err(format!("environment variable {name} is empty")),
                Err(std::env::VarError::NotPresent) => {
                    Err(format!("environment variable {name} is not set"))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    Err(format!("environment variable {name} is not valid UTF-8"))
                }
            };
        }
        if let Some(raw_path) = reference.strip_prefix("file:") {
            if raw_path.is_empty() {
                return Err("empty path after `file:`".into());
            }
            let path = base_dir.join(raw_path);
            return match std::fs::read_to_string(&path) {
                Ok(mut value) => {
                    // Only the trailing newline that editors and `kubectl create secret
                    // --from-file` leave behind; inner whitespace may be significant.
                    while value.ends_with('\n') || value.ends_with('\r') {
                        value.pop();
                    }
                    if value.is_empty() {
                        return Err(format!("file is empty: {}", path.display()));
                    }
                    Ok(Secret {
                        source: SecretSource::File(path),
                        value,
                    })
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(format!("file not found: {}", path.display()))
                }
                Err(e) => Err(format!("cannot read {}: {e}", path.display())),
            };
        }
        if reference.is_empty() {
            return Err("empty value".into());
        }
        Ok(Secret {
            source: SecretSource::Inline,
            value: reference.to_owned(),
        })
    }

    /// Wraps a value made at run time (for example an ephemeral demo key).
    pub fn generated(value: String) -> Secret {
        Secret {
            source: SecretSource::Inline,
            value,
        }
    }

    /// The secret itself. Callers must not log it.
    pub fn expose(&self) -> &str {
        &self.value
    }

    /// Where the value came from, safe to log.
    pub fn source(&self) -> &SecretSource {
        &self.source
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({}, ***)", self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_env_and_file_references_resolve() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s.txt"), "from-file\n").unwrap();
        let f = Secret::resolve("file:s.txt", dir.path()).unwrap();
        assert_eq!(f.expose(), "from-file");
        assert_eq!(
            Secret::resolve("plain", dir.path()).unwrap().expose(),
            "plain"
        );
        // SAFETY of the test: the variable name is unique to this test.
        unsafe { std::env::set_var("IDGATE_TEST_SECRET_A", "from-env") };
        let e = Secret::resolve("env:IDGATE_TEST_SECRET_A", dir.path()).unwrap();
        assert_eq!(e.expose(), "from-env");
    }

    #[test]
    fn missing_sources_are_errors_naming_the_source() {
        let dir = tempfile::tempdir().unwrap();
        let err = Secret::resolve("file:/nonexistent/x.pem", dir.path()).unwrap_err();
        assert_eq!(err, "file not found: /nonexistent/x.pem");
        let err = Secret::resolve("env:IDGATE_TEST_SURELY_UNSET", dir.path()).unwrap_err();
        assert!(err.contains("IDGATE_TEST_SURELY_UNSET is not set"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::resolve("hunter2", Path::new("/")).unwrap();
        let shown = format!("{s:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
    }
}
