//! Signing for the HTTP-Redirect binding (SAML bindings §3.4.4.1): the signature covers
//! the exact query octets `SAMLRequest=…&RelayState=…&SigAlg=…` as they travel, URL
//! encoding included, because that is what the IdP verifies before it decodes anything.

use base64::Engine;
use openssl::hash::MessageDigest;
use openssl::pkey::{Id, PKey, Private};

/// RSA PKCS#1 v1.5 with SHA-256 (what every IdP accepts).
pub const RSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256";
/// ECDSA with SHA-256, the signature as r‖s like an XML signature's value (RFC 4051).
pub const ECDSA_SHA256: &str = "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256";

/// The SP key that signs redirect-bound messages.
pub struct RedirectSigner {
    key: PKey<Private>,
    algorithm: &'static str,
}

impl RedirectSigner {
    /// Loads `sp_key` (RSA or EC P-256, PEM).
    pub fn from_pem(pem: &str) -> Result<RedirectSigner, String> {
        let key = PKey::private_key_from_pem(pem.as_bytes())
            .map_err(|e| format!("sp_key cannot sign requests: {e}"))?;
        let algorithm = match key.id() {
            Id::RSA => RSA_SHA256,
            Id::EC => ECDSA_SHA256,
            other => return Err(format!("sp_key of type {other:?} cannot sign requests")),
        };
        Ok(RedirectSigner { key, algorithm })
    }

    /// The key as DER, for xmlsec, which signs the SOAP binding's XML signatures.
    pub fn key_der(&self) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        self.key.private_key_to_der()
    }

    /// The `SigAlg` this key signs with.
    pub fn algorithm(&self) -> &'static str {
        self.algorithm
    }

    /// Adds `SigAlg` and `Signature` to a redirect URL carrying `SAMLRequest` (or
    /// `SAMLResponse`) and perhaps `RelayState`. Other query parameters the IdP's
    /// endpoint URL carries itself are left as they are and not signed, as the binding
    /// says.
    pub fn sign(&self, url: &mut url::Url) -> Result<(), openssl::error::ErrorStack> {
        let query = url.query().unwrap_or_default().to_owned();
        let part = |name: &str| {
            query
                .split('&')
                .find(|p| p.split('=').next() == Some(name))
                .map(str::to_owned)
        };
        let message = part("SAMLRequest").or_else(|| part("SAMLResponse"));
        let sig_alg: String =
            url::form_urlencoded::byte_serialize(self.algorithm.as_bytes()).collect();
        let mut signed = message.unwrap_or_default();
        if let Some(relay) = part("RelayState") {
            signed.push('&');
            signed.push_str(&relay);
        }
        signed.push_str("&SigAlg=");
        signed.push_str(&sig_alg);
        let signature = self.signature(signed.as_bytes())?;
        let encoded = base64::engine::general_purpose::STANDARD.encode(signature);
        let encoded: String = url::form_urlencoded::byte_serialize(encoded.as_bytes()).collect();
        url.set_query(Some(&format!(
            "{query}&SigAlg={sig_alg}&Signature={encoded}"
        )));
        Ok(())
    }

    fn signature(&self, data: &[u8]) -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let mut signer = openssl::sign::Signer::new(MessageDigest::sha256(), &self.key)?;
        signer.update(data)?;
        let der = signer.sign_to_vec()?;
        if self.key.id() != Id::EC {
            return Ok(der);
        }
        // OpenSSL writes ECDSA signatures as DER; XML signatures carry r‖s, each padded
        // to the curve's size.
        let sig = openssl::ecdsa::EcdsaSig::from_der(&der)?;
        let size = self.key.ec_key()?.group().degree().div_ceil(8) as i32;
        let mut raw = sig.r().to_vec_padded(size)?;
        raw.extend(sig.s().to_vec_padded(size)?);
        Ok(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_covers_the_encoded_query_and_verifies() {
        let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
        let key = PKey::from_rsa(rsa).unwrap();
        let pem = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let signer = RedirectSigner::from_pem(&pem).unwrap();
        let mut url = url::Url::parse(
            "https://idp.example.com/sso?tenant=x&SAMLRequest=a%2Bb%3D&RelayState=_r1",
        )
        .unwrap();
        signer.sign(&mut url).unwrap();
        let q = url.query().unwrap();
        let (signed, sig) = q.split_once("&Signature=").unwrap();
        let signed = &signed[signed.find("SAMLRequest=").unwrap()..];
        assert_eq!(
            signed,
            "SAMLRequest=a%2Bb%3D&RelayState=_r1&SigAlg=http%3A%2F%2Fwww.w3.org%2F2001%2F04%2Fxmldsig-more%23rsa-sha256"
        );
        let sig: String = url::form_urlencoded::parse(format!("s={sig}").as_bytes())
            .next()
            .unwrap()
            .1
            .into_owned();
        let sig = base64::engine::general_purpose::STANDARD
            .decode(sig)
            .unwrap();
        let mut v = openssl::sign::Verifier::new(MessageDigest::sha256(), &key).unwrap();
        v.update(signed.as_bytes()).unwrap();
        assert!(v.verify(&sig).unwrap());
    }

    #[test]
    fn ec_keys_sign_with_raw_r_and_s() {
        let group =
            openssl::ec::EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let ec = openssl::ec::EcKey::generate(&group).unwrap();
        let key = PKey::from_ec_key(ec).unwrap();
        let pem = String::from_utf8(key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let signer = RedirectSigner::from_pem(&pem).unwrap();
        assert_eq!(signer.algorithm(), ECDSA_SHA256);
        assert_eq!(signer.signature(b"x").unwrap().len(), 64);
    }
}
