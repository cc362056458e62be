//! Signing-key generation for `idgate keygen`.

use std::fmt;
use std::str::FromStr;

use rand::rngs::OsRng;

/// A JWT signing algorithm idgate supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// Ed25519: small, fast (about 28 µs a signature). The default.
    EdDSA,
    /// ECDSA P-256 with SHA-256.
    ES256,
    /// RSA PKCS#1 v1.5 with SHA-256, 2048-bit: for apps whose JWT library knows nothing else.
    RS256,
}

impl FromStr for Algorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "EdDSA" => Ok(Algorithm::EdDSA),
            "ES256" => Ok(Algorithm::ES256),
            "RS256" => Ok(Algorithm::RS256),
            other => Err(format!(
                "unknown algorithm {other:?}; use EdDSA, ES256 or RS256"
            )),
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Algorithm::EdDSA => "EdDSA",
            Algorithm::ES256 => "ES256",
            Algorithm::RS256 => "RS256",
        })
    }
}

/// Errors while generating a key.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// Key generation or PEM encoding failed.
    #[error("cannot generate {alg} key: {reason}")]
    Generate {
        /// The algorithm asked for.
        alg: Algorithm,
        /// What failed.
        reason: String,
    },
}

/// A new private key as PKCS#8 PEM, from the operating system's CSPRNG.
pub fn generate_pem(alg: Algorithm) -> Result<String, KeyError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey as _;
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    let fail = |e: &dyn fmt::Display| KeyError::Generate {
        alg,
        reason: e.to_string(),
    };
    let pem = match alg {
        // PKCS#8 v1 (no embedded public key): OpenSSL 3.0, and so most JWT libraries
        // built on it, refuses the v2 form that `SigningKey::to_pkcs8_pem` writes.
        Algorithm::EdDSA => ed25519_dalek::pkcs8::KeypairBytes {
            secret_key: ed25519_dalek::SigningKey::generate(&mut OsRng).to_bytes(),
            public_key: None,
        }
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| fail(&e))?
        .to_string(),
        Algorithm::ES256 => p256::SecretKey::random(&mut OsRng)
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| fail(&e))?
            .to_string(),
        Algorithm::RS256 => {
            use rsa::pkcs8::EncodePrivateKey as _;
            rsa::RsaPrivateKey::new(&mut OsRng, 2048)
                .map_err(|e| fail(&e))?
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| fail(&e))?
                .to_string()
        }
    };
    Ok(pem)
}
