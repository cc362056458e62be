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

/// A private key loaded for signing, with its public JWK.
#[derive(Clone)]
pub struct SigningKey {
    /// JWS algorithm.
    pub alg: jsonwebtoken::Algorithm,
    /// RFC 7638 thumbprint of the public key (base64url SHA-256), the JWT `kid`.
    pub kid: String,
    /// The public key as published in the JWKS.
    pub jwk: jsonwebtoken::jwk::Jwk,
    encoding: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({:?}, kid={}, ***)", self.alg, self.kid)
    }
}

/// Why a key could not be loaded. Never contains key material.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LoadError(String);

impl LoadError {
    /// Wraps another error's message.
    pub fn from_display(e: impl fmt::Display) -> LoadError {
        LoadError(e.to_string())
    }
}

fn with_kid(
    mut jwk: jsonwebtoken::jwk::Jwk,
) -> Result<(jsonwebtoken::jwk::Jwk, String), LoadError> {
    let kid = jwk
        .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
        .map_err(|e| LoadError(format!("cannot compute the key thumbprint: {e}")))?;
    jwk.common.key_id = Some(kid.clone());
    jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
    Ok((jwk, kid))
}

impl SigningKey {
    /// Loads a PEM private key, detecting the algorithm: Ed25519 → EdDSA, P-256 → ES256,
    /// RSA (2048 bits or more) → RS256. PKCS#8, SEC1 and PKCS#1 encodings are accepted
    /// and normalised, so keys from `openssl genpkey` and `idgate keygen` both work.
    pub fn from_pem(pem: &str) -> Result<SigningKey, LoadError> {
        use jsonwebtoken::{Algorithm as A, EncodingKey};
        let (alg, encoding) = if let Ok(k) =
            <ed25519_dalek::SigningKey as ed25519_dalek::pkcs8::DecodePrivateKey>::from_pkcs8_pem(
                pem,
            ) {
            // jsonwebtoken reads only the 48-byte PKCS#8 v1 form.
            let der = ed25519_dalek::pkcs8::EncodePrivateKey::to_pkcs8_der(
                &ed25519_dalek::pkcs8::KeypairBytes {
                    secret_key: k.to_bytes(),
                    public_key: None,
                },
            )
            .map_err(|e| LoadError(format!("cannot re-encode Ed25519 key: {e}")))?;
            (A::EdDSA, EncodingKey::from_ed_der(der.as_bytes()))
        } else if let Some(k) = p256_key(pem) {
            let der = p256::pkcs8::EncodePrivateKey::to_pkcs8_der(&k)
                .map_err(|e| LoadError(format!("cannot re-encode P-256 key: {e}")))?;
            (A::ES256, EncodingKey::from_ec_der(der.as_bytes()))
        } else if let Some(k) = rsa_key(pem) {
            use rsa::traits::PublicKeyParts;
            if k.n().bits() < 2048 {
                return Err(LoadError(format!(
                    "RSA key of {} bits is too short; use 2048 bits or more",
                    k.n().bits()
                )));
            }
            let der = rsa::pkcs1::EncodeRsaPrivateKey::to_pkcs1_der(&k)
                .map_err(|e| LoadError(format!("cannot re-encode RSA key: {e}")))?;
            (A::RS256, EncodingKey::from_rsa_der(der.as_bytes()))
        } else {
            return Err(LoadError(
                "not a PEM private key idgate can sign with (Ed25519, P-256 or RSA)".into(),
            ));
        };
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&encoding, alg)
            .map_err(|e| LoadError(format!("cannot derive the public key: {e}")))?;
        let (jwk, kid) = with_kid(jwk)?;
        Ok(SigningKey {
            alg,
            kid,
            jwk,
            encoding,
        })
    }

    /// Signs claims with this key; the header carries `kid`.
    pub fn sign<T: serde::Serialize>(&self, claims: &T) -> Result<String, LoadError> {
        let mut header = jsonwebtoken::Header::new(self.alg);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| LoadError(format!("signing failed: {e}")))
    }
}

fn p256_key(pem: &str) -> Option<p256::SecretKey> {
    use p256::pkcs8::DecodePrivateKey;
    p256::SecretKey::from_pkcs8_pem(pem)
        .ok()
        .or_else(|| p256::SecretKey::from_sec1_pem(pem).ok())
}

fn rsa_key(pem: &str) -> Option<rsa::RsaPrivateKey> {
    use rsa::pkcs1::DecodeRsaPrivateKey;
    use rsa::pkcs8::DecodePrivateKey;
    rsa::RsaPrivateKey::from_pkcs8_pem(pem)
        .ok()
        .or_else(|| rsa::RsaPrivateKey::from_pkcs1_pem(pem).ok())
}

/// The public JWK (with `kid`) of a PEM key that may be private or public: what
/// `[identity].previous_keys` lists during a rotation.
pub fn public_jwk(pem: &str) -> Result<jsonwebtoken::jwk::Jwk, LoadError> {
    use jsonwebtoken::{Algorithm as A, DecodingKey};
    if pem.contains("PRIVATE KEY") {
        return SigningKey::from_pem(pem).map(|k| k.jwk);
    }
    type Loader = fn(&[u8]) -> jsonwebtoken::errors::Result<DecodingKey>;
    let attempts: [(A, Loader); 3] = [
        (A::EdDSA, DecodingKey::from_ed_pem),
        (A::ES256, DecodingKey::from_ec_pem),
        (A::RS256, DecodingKey::from_rsa_pem),
    ];
    for (alg, load) in attempts {
        if let Ok(key) = load(pem.as_bytes())
            && let Ok(jwk) = jsonwebtoken::jwk::Jwk::from_decoding_key(&key, Some(alg))
        {
            return with_kid(jwk).map(|(jwk, _)| jwk);
        }
    }
    Err(LoadError("not a PEM key (Ed25519, P-256 or RSA)".into()))
}
