//! SCIM bearer tokens. Only a token's SHA-256 is ever stored or configured, so a leaked
//! config file does not grant SCIM access.

use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A new random token (256 bits, base64url) and its config form `sha256:<hex>`.
pub fn generate() -> (String, String) {
    // A token starting with `-` reads as an option to command-line tools it is pasted
    // into (`--token -x…`), so draw again: one draw in 64 is discarded.
    let token = loop {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !token.starts_with('-') {
            break token;
        }
    };
    let hashed = config_hash(&token);
    (token, hashed)
}

/// SHA-256 of the token's UTF-8 bytes.
pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// `sha256:` followed by 64 lowercase hex digits, as `[tenants.scim].token` expects.
pub fn config_hash(token: &str) -> String {
    format!("sha256:{}", hex::encode(digest(token)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_sha256_of_the_token_in_lowercase_hex() {
        // Independent value: `printf abc | sha256sum`.
        assert_eq!(
            config_hash("abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn generated_tokens_differ_and_match_their_hash() {
        let (a, ha) = generate();
        let (b, _) = generate();
        assert_ne!(a, b);
        assert!(a.len() >= 43);
        assert_eq!(ha, config_hash(&a));
    }

    #[test]
    fn generated_tokens_never_start_like_an_option() {
        // One in 64 base64url draws starts with `-`; 2,000 draws all missing it by
        // chance would happen about once in 10^14 runs.
        for _ in 0..2000 {
            assert!(!generate().0.starts_with('-'));
        }
    }
}
