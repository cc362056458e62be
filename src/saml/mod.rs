//! SAML 2.0 Service Provider: metadata, SP-initiated login (HTTP-Redirect AuthnRequest)
//! and the Assertion Consumer Service (HTTP-POST), validated with samael + xmlsec.
//!
//! Only the content that a configured IdP certificate signed is ever read (samael reduces
//! the document to its verified parts before parsing), so signature-wrapping payloads
//! cannot change the identity. On top of samael's checks this module requires an
//! audience restriction naming this SP, bounds clock skew to 60 s, accepts only
//! InResponseTo values this tenant issued (each once), and refuses any assertion id
//! seen before, across replicas, until the assertion would have expired.
//!
//! Encrypted assertions are decrypted first ([`decrypt`]), then judged like plaintext
//! ones: the decrypted Assertion must carry the IdP's signature, or the Response around
//! the ciphertext must (verified before decrypting, over the ciphertext it covers).
//!
//! samael validates the Response only when the Response itself is signed; when only the
//! Assertion is, the Response around it reaches nobody's checks. So [`check_shell`]
//! holds every Response, signed or not, to the same rules: its Destination, Issuer and
//! top-level status, and exactly one assertion where SAML puts it.

pub mod decrypt;
pub mod metadata;
pub mod redirect;
pub mod routes;
pub mod slo;

use redirect::RedirectSigner;

use std::time::Duration;

use base64::Engine;
use samael::crypto::CryptoProvider;
use samael::metadata::{EncryptionMethod, EntityDescriptor, IdpSsoDescriptor, KeyDescriptor};
use samael::schema::Assertion;
use samael::service_provider::{ServiceProvider, ServiceProviderBuilder};
use samael::traits::ToXml;

use crate::config::{AttributeMap, IdpSource, TenantConfig};
use crate::directory::{LoginIdentity, has_control_character};
use crate::store::{EphemeralStore, Store, StoreError};

/// How long a login started here may take at the IdP.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Clock skew tolerated on every time condition.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

const HTTP_REDIRECT: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect";
const HTTP_POST: &str = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST";
const SOAP: &str = "urn:oasis:names:tc:SAML:2.0:bindings:SOAP";

/// Why a SAML response was refused. Each has a stable code for logs and metrics; the
/// user sees only a generic page with the request's reference.
#[derive(Debug, thiserror::Error)]
pub enum AcsError {
    /// The POST carried no (or undecodable) `SAMLResponse`.
    #[error("malformed SAMLResponse: {0}")]
    Malformed(String),
    /// samael, the algorithm check or the Response shell check refused it; the code
    /// names the check (see [`rejection_code`]).
    #[error("response rejected ({code}): {detail}")]
    Rejected {
        /// Stable reason code.
        code: &'static str,
        /// samael's message.
        detail: String,
    },
    /// No AudienceRestriction naming this SP.
    #[error("assertion audience does not name this SP ({0})")]
    Audience(String),
    /// The Assertion itself is unsigned while the tenant requires signed assertions.
    #[error("the assertion itself is not signed (want_assertions_signed)")]
    AssertionUnsigned,
    /// The assertion id was accepted before.
    #[error("assertion {0} was already used (replay)")]
    Replay(String),
    /// Unsolicited response while `allow_idp_initiated` is off, or an InResponseTo
    /// that this tenant never issued or already used.
    #[error("InResponseTo is not a pending request of this tenant")]
    UnknownRequest,
    /// A solicited response arrived in a browser other than the one that started the
    /// login (no or wrong login cookie): login CSRF.
    #[error("the login was started in another browser")]
    BrowserMismatch,
    /// A required attribute (user id or group id) is missing.
    #[error("required attribute {0} missing")]
    MissingAttribute(String),
    /// A mapped attribute holds a control character (named, never its value: it may
    /// be an injection attempt, or personal data).
    #[error("attribute {0} holds a control character")]
    MalformedAttribute(String),
    /// An encrypted assertion could not be decrypted, or is not covered by a signature
    /// of the IdP.
    #[error("encrypted assertion refused: {0}")]
    Decryption(String),
    /// A plaintext assertion while the tenant sets `require_encrypted_assertions`.
    #[error("the assertion is not encrypted (require_encrypted_assertions)")]
    Unencrypted,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<decrypt::DecryptError> for AcsError {
    fn from(e: decrypt::DecryptError) -> Self {
        AcsError::Decryption(e.to_string())
    }
}

impl AcsError {
    /// Metric label / log code.
    pub fn code(&self) -> &'static str {
        match self {
            AcsError::Malformed(_) => "malformed",
            AcsError::Rejected { code, .. } => code,
            AcsError::Audience(_) => "audience",
            AcsError::AssertionUnsigned => "assertion_unsigned",
            AcsError::Replay(_) => "replay",
            AcsError::UnknownRequest => "unknown_request",
            AcsError::BrowserMismatch => "browser_mismatch",
            AcsError::MissingAttribute(_) => "missing_attribute",
            AcsError::MalformedAttribute(_) => "malformed_attribute",
            AcsError::Decryption(_) => "decryption",
            AcsError::Unencrypted => "unencrypted",
            AcsError::Store(_) => "store_unavailable",
        }
    }
}

/// What an accepted assertion yields: the identity, mapped through the tenant's
/// attributes into the directory's terms, and where to send the browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginClaims {
    /// Who is logging in.
    pub identity: LoginIdentity,
    /// Where to go after login (a same-origin path), from the pending request.
    pub return_to: String,
    /// Every attribute of the assertion, by name, with its first value as sent (not
    /// trimmed, so that a reader can refuse control characters anywhere in it): what
    /// protocol-specific layers (Maestrano's session values) read beyond the identity.
    pub attributes: std::collections::HashMap<String, String>,
    /// The `SessionIndex` of the assertion's AuthnStatement: with the NameID, what a
    /// Single Logout names the session by.
    pub session_index: Option<String>,
}

/// A tenant's SP as a request finds it.
pub enum SpState {
    /// Ready for logins.
    Ready(std::sync::Arc<SamlTenant>),
    /// The tenant's IdP metadata comes from a URL and has never been had (neither
    /// fetched nor found in the store): logins cannot start or be checked.
    Pending,
}

/// One tenant's SP.
pub struct SamlTenant {
    tenant: String,
    sp: ServiceProvider,
    /// The same SP without IdP certificates, which samael then trusts blindly. Used only
    /// on a Response whose signature this module has verified over the ciphertext
    /// before decrypting it, and which therefore can no longer verify (see
    /// [`SamlTenant::consume`]).
    verified_sp: ServiceProvider,
    /// What samael checks signature algorithms against (None: the legacy list, checked
    /// here).
    allowed_algorithms: Option<Vec<samael::crypto::AllowedSignatureAlgorithm>>,
    /// `sp_key` then `sp_previous_keys`; None without `sp_key`.
    decryption: Option<decrypt::DecryptionKeys>,
    /// `sp_certificate`, PEM, for SP metadata.
    sp_certificate: Option<String>,
    require_encrypted: bool,
    /// `sign_requests`: the SP key and its signature algorithm for HTTP-Redirect
    /// AuthnRequests.
    request_signer: Option<RedirectSigner>,
    /// The SP key for logout messages, which Single Logout always signs (an unsigned
    /// LogoutRequest would let anyone end a user's session at the IdP).
    logout_signer: Option<RedirectSigner>,
    /// The IdP's SingleLogoutService (HTTP-Redirect): `idp_slo_url`, else the metadata's.
    idp_slo_url: Option<String>,
    /// Where LogoutResponses go, when the metadata names a ResponseLocation.
    idp_slo_response_url: Option<String>,
    /// This SP's own SLO endpoint, the Destination of logout messages to it.
    slo_endpoint: String,
    sso_url: String,
    acs_url: String,
    entity_id: String,
    /// The IdP's entity id, which a Response Issuer must match when present.
    idp_entity_id: Option<String>,
    attributes: AttributeMap,
    want_assertions_signed: bool,
    allow_idp_initiated: bool,
    allow_sha1: bool,
}

/// The public URL idgate is reached at, from a tenant's ACS URL (idgate's own, or
/// Maestrano's consume path), keeping any path prefix of `public_url`.
fn public_root(acs_url: &str) -> &str {
    ["/_idgate/saml/", "/maestrano/auth/saml/consume"]
        .iter()
        .find_map(|marker| acs_url.rfind(marker).map(|i| &acs_url[..i]))
        .unwrap_or(acs_url)
}

/// A tenant's own SLO endpoint: what SP metadata publishes and what logout messages to
/// this SP must name as their Destination.
fn slo_endpoint(acs_url: &str, tenant: &str) -> String {
    format!("{}/_idgate/saml/{tenant}/slo", public_root(acs_url))
}

fn cert_base64(pem: &str) -> String {
    pem.lines()
        .filter(|l| !l.starts_with("-----"))
        .map(str::trim)
        .collect()
}

/// A tenant's SP metadata, from its configuration alone: nothing in it comes from the
/// IdP, so it is published even while the IdP's metadata is still being fetched (an IdP
/// admin often needs it first, to create the application idgate is then pointed at).
/// No `validUntil`: the document only changes with the configuration.
pub fn sp_metadata_xml(tenant: &TenantConfig, acs_url: &str) -> Result<String, String> {
    use samael::metadata::{Endpoint, IndexedEndpoint, SpSsoDescriptor};
    let saml = &tenant.saml;
    let descriptor =
        |pem: &str, key_use: &str, methods: Option<Vec<EncryptionMethod>>| KeyDescriptor {
            key_use: Some(key_use.into()),
            key_info: samael::key_info::KeyInfo {
                id: None,
                x509_data: Some(samael::key_info::X509Data {
                    certificates: vec![cert_base64(pem)],
                }),
            },
            encryption_methods: methods,
        };
    let key_descriptors = saml.sp_key.as_ref().map(|k| {
        let mut descriptors = vec![descriptor(&k.certificate, "signing", None)];
        // Only an RSA key can be encrypted to with the supported key transports
        // (RSA-OAEP): an EC key is published for signing only, so that no IdP is
        // invited to encrypt to a key it cannot use.
        let encrypts = openssl::x509::X509::from_pem(k.certificate.as_bytes())
            .and_then(|x| x.public_key())
            .is_ok_and(|p| p.id() == openssl::pkey::Id::RSA);
        if encrypts {
            // GCM first: an IdP picks the first method it supports, and CBC is
            // malleable.
            let methods = decrypt::CONTENT_ALGORITHMS
                .iter()
                .chain(decrypt::KEY_TRANSPORT_ALGORITHMS.iter())
                .map(|a| EncryptionMethod {
                    algorithm: (*a).to_owned(),
                })
                .collect();
            descriptors.push(descriptor(&k.certificate, "encryption", Some(methods)));
        }
        descriptors
    });
    let slo_endpoint = slo_endpoint(acs_url, &tenant.id);
    let sp = SpSsoDescriptor {
        protocol_support_enumeration: Some("urn:oasis:names:tc:SAML:2.0:protocol".into()),
        key_descriptors,
        // Single Logout is offered only with a key to sign its messages with.
        single_logout_services: saml.sp_key.as_ref().map(|_| {
            [
                (HTTP_REDIRECT, slo_endpoint.clone()),
                (HTTP_POST, slo_endpoint.clone()),
                (SOAP, format!("{slo_endpoint}/soap")),
            ]
            .into_iter()
            .map(|(binding, location)| Endpoint {
                binding: binding.into(),
                location,
                response_location: None,
            })
            .collect()
        }),
        name_id_formats: Some(
            [
                "urn:oasis:names:tc:SAML:2.0:nameid-format:persistent",
                "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
                "urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified",
            ]
            .map(String::from)
            .to_vec(),
        ),
        authn_requests_signed: Some(saml.sp_key.is_some() && saml.sign_requests),
        want_assertions_signed: Some(saml.want_assertions_signed),
        assertion_consumer_services: vec![IndexedEndpoint {
            binding: HTTP_POST.into(),
            location: acs_url.to_owned(),
            response_location: None,
            index: 0,
            is_default: None,
        }],
        ..SpSsoDescriptor::default()
    };
    EntityDescriptor {
        entity_id: Some(saml.sp_entity_id.clone()),
        sp_sso_descriptors: Some(vec![sp]),
        ..EntityDescriptor::default()
    }
    .to_string()
    .map_err(|e| e.to_string())
}

impl SamlTenant {
    /// What of `xml` a signature by one of the IdP's certificates covers, under this
    /// tenant's algorithm list (samael + xmlsec): the one way a document is verified
    /// outside samael's response flow (a Response before decryption, Single Logout).
    fn reduce_to_idp_signed(&self, xml: &str) -> Result<String, samael::crypto::CryptoError> {
        let certs = self
            .sp
            .idp_signing_certs()
            .ok()
            .flatten()
            .unwrap_or_default();
        samael::crypto::Crypto::reduce_xml_to_signed_with_allowed_algorithms(
            xml,
            &certs,
            samael::crypto::ReduceMode::default(),
            self.allowed_algorithms.as_deref(),
        )
    }

    /// Builds the SP for a validated tenant; `acs_url` is where the IdP posts. A tenant
    /// whose metadata comes from a URL has no SP until it is fetched: see
    /// [`SamlTenant::from_metadata`] and [`metadata`].
    pub fn new(tenant: &TenantConfig, acs_url: String) -> Result<SamlTenant, String> {
        let saml = &tenant.saml;
        let idp: EntityDescriptor = match &saml.idp {
            IdpSource::Metadata(xml) => xml
                .parse()
                .map_err(|e| format!("cannot parse IdP metadata: {e}"))?,
            IdpSource::Url(m) => {
                return Err(format!(
                    "the IdP metadata from {} has not been fetched yet",
                    m.url
                ));
            }
            IdpSource::Explicit {
                entity_id,
                sso_url,
                certificates,
            } => EntityDescriptor {
                entity_id: Some(entity_id.clone()),
                idp_sso_descriptors: Some(vec![IdpSsoDescriptor {
                    id: None,
                    valid_until: None,
                    cache_duration: None,
                    error_url: None,
                    signature: None,
                    organization: None,
                    contact_people: Vec::new(),
                    artifact_resolution_service: Vec::new(),
                    single_logout_services: Vec::new(),
                    manage_name_id_services: Vec::new(),
                    name_id_formats: Vec::new(),
                    want_authn_requests_signed: None,
                    name_id_mapping_services: Vec::new(),
                    assertion_id_request_services: Vec::new(),
                    attribute_profiles: Vec::new(),
                    attributes: Vec::new(),
                    protocol_support_enumeration: Some(
                        "urn:oasis:names:tc:SAML:2.0:protocol".into(),
                    ),
                    key_descriptors: certificates
                        .iter()
                        .map(|pem| KeyDescriptor {
                            key_use: Some("signing".into()),
                            key_info: samael::key_info::KeyInfo {
                                id: None,
                                x509_data: Some(samael::key_info::X509Data {
                                    certificates: vec![cert_base64(pem)],
                                }),
                            },
                            encryption_methods: None,
                        })
                        .collect(),
                    single_sign_on_services: vec![samael::metadata::Endpoint {
                        binding: HTTP_REDIRECT.into(),
                        location: sso_url.to_string(),
                        response_location: None,
                    }],
                }]),
                ..EntityDescriptor::default()
            },
        };
        SamlTenant::from_metadata(tenant, acs_url, idp)
    }

    /// Builds the SP from IdP metadata already checked (see [`metadata::check`]): every
    /// `use="signing"` certificate it lists is trusted, and no other, so metadata that
    /// drops a certificate ends the trust in it as soon as the SP is rebuilt from it.
    pub fn from_metadata(
        tenant: &TenantConfig,
        acs_url: String,
        idp: EntityDescriptor,
    ) -> Result<SamlTenant, String> {
        let saml = &tenant.saml;
        let idp_entity_id = idp.entity_id.clone();
        let metadata_slo = idp
            .idp_sso_descriptors
            .iter()
            .flatten()
            .flat_map(|d| d.single_logout_services.iter())
            .find(|e| e.binding == HTTP_REDIRECT)
            .cloned();
        let (idp_slo_url, idp_slo_response_url) = match &saml.idp_slo_url {
            Some(u) => (Some(u.to_string()), None),
            None => match metadata_slo {
                Some(e) => (Some(e.location), e.response_location),
                None => (None, None),
            },
        };
        let skew = chrono::Duration::seconds(MAX_SKEW.as_secs() as i64);
        let mut algorithms = vec![
            samael::crypto::AllowedSignatureAlgorithm::RsaSha256,
            samael::crypto::AllowedSignatureAlgorithm::RsaSha384,
            samael::crypto::AllowedSignatureAlgorithm::RsaSha512,
            samael::crypto::AllowedSignatureAlgorithm::EcdsaSha256,
            samael::crypto::AllowedSignatureAlgorithm::EcdsaSha384,
            samael::crypto::AllowedSignatureAlgorithm::EcdsaSha512,
        ];
        if saml.allow_sha1 {
            // samael has no SHA-1 entry in its allow-list; legacy tenants get no
            // algorithm filter from samael (the signature is still required) and
            // `consume` checks the algorithms against LEGACY_ALGORITHMS instead.
            algorithms.clear();
        }
        let allowed_algorithms = (!algorithms.is_empty()).then_some(algorithms);
        let build = |idp: EntityDescriptor| {
            ServiceProviderBuilder::default()
                .entity_id(saml.sp_entity_id.clone())
                .acs_url(acs_url.clone())
                .metadata_url(saml.sp_entity_id.clone())
                .idp_metadata(idp)
                .allow_idp_initiated(saml.allow_idp_initiated)
                .max_clock_skew(skew)
                .max_issue_delay(chrono::Duration::seconds(300))
                .authn_name_id_format(Some(saml.name_id_format.clone()))
                .allowed_signature_algorithms(allowed_algorithms.clone())
                .build()
                .map_err(|e| format!("cannot build the SP: {e}"))
        };
        let mut keyless = idp.clone();
        for d in keyless.idp_sso_descriptors.iter_mut().flatten() {
            d.key_descriptors.clear();
        }
        let verified_sp = build(keyless)?;
        let sp = build(idp)?;
        // The samael pitfall: without signing certificates it accepts anything.
        match sp.idp_signing_certs() {
            Ok(Some(certs)) if !certs.is_empty() => {}
            _ => return Err("the IdP has no usable signing certificate".into()),
        }
        let sso_url = sp
            .sso_binding_location(HTTP_REDIRECT)
            .ok_or("the IdP has no HTTP-Redirect SSO endpoint")?;
        let decryption = saml
            .sp_key
            .as_ref()
            .map(|k| {
                decrypt::DecryptionKeys::from_pems(
                    std::iter::once(k.key.expose())
                        .chain(saml.sp_previous_keys.iter().map(|s| s.expose())),
                    saml.allow_rsa1_5,
                )
            })
            .transpose()?;
        Ok(SamlTenant {
            tenant: tenant.id.clone(),
            sp,
            verified_sp,
            allowed_algorithms,
            decryption,
            sp_certificate: saml.sp_key.as_ref().map(|k| k.certificate.clone()),
            require_encrypted: saml.require_encrypted_assertions,
            request_signer: match (&saml.sp_key, saml.sign_requests) {
                (Some(k), true) => Some(RedirectSigner::from_pem(k.key.expose())?),
                _ => None,
            },
            logout_signer: saml
                .sp_key
                .as_ref()
                .map(|k| RedirectSigner::from_pem(k.key.expose()))
                .transpose()?,
            idp_slo_url,
            idp_slo_response_url,
            slo_endpoint: slo_endpoint(&acs_url, &tenant.id),
            sso_url,
            acs_url,
            entity_id: saml.sp_entity_id.clone(),
            idp_entity_id,
            attributes: saml.attributes.clone(),
            want_assertions_signed: saml.want_assertions_signed,
            allow_idp_initiated: saml.allow_idp_initiated,
            allow_sha1: saml.allow_sha1,
        })
    }

    /// Tenant id.
    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// Starts an SP-initiated login: returns the IdP redirect URL and a nonce for the
    /// browser's login cookie. The request id (128 random bits) is the RelayState and
    /// is kept, with `return_to` and the nonce's hash, for [`PENDING_TTL`]; the ACS
    /// accepts the response only from the browser holding the nonce, so an attacker
    /// cannot post their own login into someone else's browser.
    pub async fn login_redirect(
        &self,
        store: &Store,
        return_to: &str,
    ) -> Result<(String, String), AcsError> {
        let mut request = self
            .sp
            .make_authentication_request(&self.sso_url)
            .map_err(|e| AcsError::Malformed(e.to_string()))?;
        let id = format!("_{}", hex::encode(rand::random::<[u8; 16]>()));
        request.id = id.clone();
        let nonce =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let pending = serde_json::json!({ "return_to": return_to, "nonce": nonce_hash(&nonce) });
        store
            .put_once(&self.pending_key(&id), &pending.to_string(), PENDING_TTL)
            .await?;
        let mut url = request
            .redirect(&id)
            .map_err(|e| AcsError::Malformed(e.to_string()))?
            .ok_or_else(|| AcsError::Malformed("no SSO destination".into()))?;
        if let Some(signer) = &self.request_signer {
            signer
                .sign(&mut url)
                .map_err(|e| AcsError::Malformed(format!("cannot sign the AuthnRequest: {e}")))?;
        }
        Ok((url.to_string(), nonce))
    }

    fn pending_key(&self, request_id: &str) -> String {
        format!("saml:{}:req:{request_id}", self.tenant)
    }

    /// Validates a posted `SAMLResponse` and returns the identity it carries.
    pub async fn consume(
        &self,
        store: &Store,
        saml_response: &str,
        relay_state: Option<&str>,
        login_nonce: Option<&str>,
    ) -> Result<LoginClaims, AcsError> {
        let xml = self.open(saml_response)?;
        let in_response_to = response_in_response_to(&xml);
        let pending: Vec<String> = in_response_to.iter().cloned().collect();
        let pending_refs: Vec<&str> = pending.iter().map(String::as_str).collect();
        let (xml, sp) = if decrypt::is_encrypted(&xml)? {
            self.decrypt(&xml)?
        } else if self.require_encrypted {
            return Err(AcsError::Unencrypted);
        } else {
            (xml, &self.sp)
        };
        // PreDigest: what is parsed is exactly the content the signature's digest was
        // computed over (xmlsec's pre-digest buffer), the strictest of samael's modes.
        // It also leaks nothing: the default mode moves a signed Assertion to the
        // document root through libxml's `Document::set_root_element`, which drops the
        // detached Response for good (about 2.9 KB per login; tests/saml_memory.rs).
        let assertion = sp
            .parse_xml_response_with_mode(
                &xml,
                Some(&pending_refs),
                samael::crypto::ReduceMode::PreDigest,
            )
            .map_err(|e| AcsError::Rejected {
                code: rejection_code(&e),
                detail: e.to_string(),
            })?;
        // The verified content must be the Assertion the checked shell holds. Another
        // signed Response or Assertion elsewhere in the document (in a ds:Object of a
        // signature, say) verifies too, and PreDigest prefers a signed Response.
        if root_assertion_id(&xml).as_deref() != Some(assertion.id.as_str()) {
            return Err(AcsError::Rejected {
                code: "signature",
                detail: format!(
                    "the signed assertion {} is not the Assertion the Response holds",
                    assertion.id
                ),
            });
        }
        // A solicited assertion names its request in signed content. The unsigned
        // Response around it must name the same, or a captured answer could be passed
        // off as unsolicited where IdP-initiated logins are allowed (samael checks
        // nothing then), skipping the tie to the browser that began the login.
        if let Some(signed) = assertion_in_response_to(&assertion)
            && in_response_to.as_deref() != Some(signed)
        {
            return Err(AcsError::Rejected {
                code: "in_response_to",
                detail: format!(
                    "the assertion answers request {signed}, the Response around it {}",
                    in_response_to.as_deref().unwrap_or("none")
                ),
            });
        }
        self.check_audience(&assertion)?;
        // samael hands back only verified content, with signatures stripped; the
        // Assertion was signed itself if some signature in the document references its
        // ID (every signature present has been verified by then).
        if self.want_assertions_signed && !assertion_signed_itself(&xml, &assertion.id) {
            return Err(AcsError::AssertionUnsigned);
        }
        // Solicited: the request must be one we issued, and is used up now.
        let return_to = match &in_response_to {
            Some(id) => {
                let pending = store
                    .take(&self.pending_key(id))
                    .await?
                    .ok_or(AcsError::UnknownRequest)?;
                let pending: serde_json::Value =
                    serde_json::from_str(&pending).map_err(|_| AcsError::UnknownRequest)?;
                let expected = pending["nonce"].as_str().unwrap_or_default().as_bytes();
                let presented = login_nonce.map(nonce_hash).unwrap_or_default();
                if !bool::from(subtle::ConstantTimeEq::ct_eq(
                    expected,
                    presented.as_bytes(),
                )) {
                    return Err(AcsError::BrowserMismatch);
                }
                pending["return_to"].as_str().unwrap_or("/").to_owned()
            }
            None if self.allow_idp_initiated => relay_state
                .and_then(safe_return_to)
                .unwrap_or_else(|| "/".to_owned()),
            None => return Err(AcsError::UnknownRequest),
        };
        // Replay: the assertion id is claimed once, until it could no longer be valid.
        let ttl = assertion_lifetime(&assertion);
        if !store
            .put_once(
                &format!("saml:{}:assertion:{}", self.tenant, assertion.id),
                "1",
                ttl,
            )
            .await?
        {
            return Err(AcsError::Replay(assertion.id.clone()));
        }
        self.claims(&assertion, return_to)
    }

    /// The XML of a posted `SAMLResponse`, once it has passed the checks that need no
    /// signature: the algorithms of any signature in it, and the Response shell.
    fn open(&self, saml_response: &str) -> Result<String, AcsError> {
        // Some IdPs wrap the base64 at 76 columns.
        let compact: String = saml_response
            .chars()
            .filter(|c| !c.is_ascii_whitespace())
            .collect();
        let xml = base64::engine::general_purpose::STANDARD
            .decode(compact)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| AcsError::Malformed("not base64 UTF-8".into()))?;
        self.check_algorithms(&xml)?;
        check_shell(&xml, &self.acs_url, self.idp_entity_id.as_deref())?;
        Ok(xml)
    }

    /// What [`SamlTenant::consume`] does to a posted `SAMLResponse` before it verifies
    /// any signature, in the same order, for the fuzz target (`crate::fuzzing`): a
    /// fuzzer cannot make the IdP's signatures, so it reaches no further. An encrypted
    /// assertion is decrypted when the Response around it is not signed; under a
    /// Response signature decryption waits for that signature, so it stops there.
    pub(crate) fn check_unverified(&self, saml_response: &str) -> Result<(), AcsError> {
        let xml = self.open(saml_response)?;
        let _ = response_in_response_to(&xml);
        if decrypt::is_encrypted(&xml)? {
            if !response_signed_itself(&xml) {
                self.decrypt(&xml)?;
            }
        } else if self.require_encrypted {
            return Err(AcsError::Unencrypted);
        }
        Ok(())
    }

    /// Decrypts the EncryptedAssertion of a Response (already through the shell check)
    /// and returns the Response with the plaintext Assertion in place, and the SP that
    /// must validate it.
    ///
    /// A signature of the IdP must cover what is decrypted. A Response signature covers
    /// the ciphertext, so it is verified here, before decrypting, and validation then
    /// continues on exactly the content it verified (samael's reduced document), with
    /// the signature removed since it cannot verify once the ciphertext is replaced.
    /// Otherwise the decrypted Assertion must be signed itself, and samael verifies that
    /// signature as for any plaintext assertion. With neither, the assertion is refused:
    /// anybody can encrypt to the SP's public certificate. A CBC ciphertext is malleable
    /// (its plaintext can be steered blockwise), so for CBC the same rule is stated on
    /// its own and named in the log.
    fn decrypt(&self, xml: &str) -> Result<(String, &ServiceProvider), AcsError> {
        let response_signed = response_signed_itself(xml);
        let source = if response_signed {
            self.reduce_to_idp_signed(xml)
                .map_err(|e| AcsError::Rejected {
                    code: "signature",
                    detail: format!(
                        "the Response signature over the encrypted assertion does not verify: {e}"
                    ),
                })?
        } else {
            xml.to_owned()
        };
        let d = decrypt::decrypt_response(&source, self.decryption.as_ref(), response_signed)?;
        let assertion_signed = assertion_signed_itself(&d.xml, &d.assertion_id);
        if !response_signed && !assertion_signed {
            return Err(AcsError::Decryption(match d.mode {
                decrypt::ContentMode::Cbc => "AES-CBC content without a signature covering it (neither the Assertion inside nor the Response around it is signed)".into(),
                decrypt::ContentMode::Gcm => "the encrypted assertion is neither signed itself nor inside a signed Response".into(),
            }));
        }
        if d.key_index > 0 {
            tracing::info!(
                tenant = %self.tenant,
                key = d.key_index - 1,
                "encrypted assertion decrypted with sp_previous_keys[{}]",
                d.key_index - 1
            );
        }
        // The decrypted Assertion's own signature, if any, meets the same algorithm rules
        // and the same shell rules as a plaintext one.
        self.check_algorithms(&d.xml)?;
        check_shell(&d.xml, &self.acs_url, self.idp_entity_id.as_deref())?;
        // Only content under a Response signature verified above may skip samael's own
        // verification; everything else goes through it, whatever was checked before.
        let sp = if response_signed && !assertion_signed {
            &self.verified_sp
        } else {
            &self.sp
        };
        Ok((d.xml, sp))
    }

    /// Refuses a signature algorithm this tenant does not accept, naming it. samael
    /// would refuse it too (it has no SHA-1 entry in its allow-list, so a legacy tenant
    /// runs it without one), but only as a signature that failed to verify, which sends
    /// an operator looking for a missing or wrong key instead of at `allow_sha1`.
    fn check_algorithms(&self, xml: &str) -> Result<(), AcsError> {
        let accepted: &[&str] = if self.allow_sha1 {
            &LEGACY_ALGORITHMS
        } else {
            &STRICT_ALGORITHMS
        };
        let Some(bad) = signature_algorithms(xml)
            .into_iter()
            .find(|a| !accepted.contains(&a.as_str()))
        else {
            return Ok(());
        };
        let hint = if LEGACY_ALGORITHMS.contains(&bad.as_str()) {
            " (SHA-1 is accepted only when the tenant sets allow_sha1 = true)"
        } else {
            ""
        };
        Err(AcsError::Rejected {
            code: "signature",
            detail: format!("signature algorithm {bad} is not accepted{hint}"),
        })
    }

    fn check_audience(&self, assertion: &Assertion) -> Result<(), AcsError> {
        let ok = assertion
            .conditions
            .as_ref()
            .and_then(|c| c.audience_restrictions.as_ref())
            .is_some_and(|rs| {
                !rs.is_empty() && rs.iter().all(|r| r.audience.contains(&self.entity_id))
            });
        if ok {
            Ok(())
        } else {
            Err(AcsError::Audience(self.entity_id.clone()))
        }
    }

    fn claims(&self, assertion: &Assertion, return_to: String) -> Result<LoginClaims, AcsError> {
        // Checked before trimming: a trailing line feed trimmed away would let two
        // different values sent by the IdP become one identity.
        let attr = |name: &str| -> Result<Option<String>, AcsError> {
            let value = assertion
                .attribute_statements
                .iter()
                .flatten()
                .flat_map(|s| s.attributes.iter())
                .find(|a| {
                    a.name.as_deref() == Some(name) || a.friendly_name.as_deref() == Some(name)
                })
                .and_then(|a| a.values.iter().find_map(|v| v.value.as_deref()));
            clean(name, value)
        };
        let name_id = clean(
            "NameID",
            assertion
                .subject
                .as_ref()
                .and_then(|s| s.name_id.as_ref())
                .map(|n| n.value.as_str()),
        )?;
        let a = &self.attributes;
        let user_id = attr(&a.user_id)?
            .or_else(|| name_id.clone())
            .ok_or_else(|| AcsError::MissingAttribute(a.user_id.clone()))?;
        let group_id =
            attr(&a.group_id)?.ok_or_else(|| AcsError::MissingAttribute(a.group_id.clone()))?;
        let attributes = assertion
            .attribute_statements
            .iter()
            .flatten()
            .flat_map(|s| s.attributes.iter())
            .filter_map(|a| {
                let name = a.name.clone().or_else(|| a.friendly_name.clone())?;
                let value = a.values.iter().find_map(|v| v.value.clone())?;
                Some((name, value))
            })
            .collect();
        let session_index = clean(
            "SessionIndex",
            assertion
                .authn_statements
                .iter()
                .flatten()
                .find_map(|s| s.session_index.as_deref()),
        )?;
        Ok(LoginClaims {
            attributes,
            session_index,
            identity: LoginIdentity {
                user_id,
                email: attr(&a.email)?,
                given_name: attr(&a.first_name)?,
                family_name: attr(&a.last_name)?,
                group_name: attr(&a.group_name)?,
                role: attr(&a.role)?,
                group_id,
                name_id,
            },
            return_to,
        })
    }

    /// The ACS URL.
    pub fn acs_url(&self) -> &str {
        &self.acs_url
    }

    /// The IdP's SingleLogoutService URL, where a logout started here sends the
    /// browser when Single Logout is on (pages name its origin in `form-action`).
    pub fn idp_slo_url(&self) -> Option<&str> {
        self.idp_slo_url.as_deref()
    }
}

/// An identity value as the IdP sent it: refused if it holds a control character
/// anywhere (see [`has_control_character`]), else trimmed; empty counts as absent.
fn clean(attribute: &str, value: Option<&str>) -> Result<Option<String>, AcsError> {
    match value {
        Some(v) if has_control_character(v) => {
            Err(AcsError::MalformedAttribute(attribute.to_owned()))
        }
        Some(v) => Ok(Some(v.trim().to_owned()).filter(|v| !v.is_empty())),
        None => Ok(None),
    }
}

/// The stable reason code for each check samael performs. Together with
/// [`AcsError::code`] these are every reason a login can be refused for.
pub fn rejection_code(e: &samael::service_provider::Error) -> &'static str {
    use samael::service_provider::Error as E;
    match e {
        E::FailedToValidateSignature | E::CryptoXmlError(_) | E::CryptoProviderError(_) => {
            "signature"
        }
        E::DestinationValidationError { .. } => "destination",
        E::AssertionRecipientMismatch { .. } => "recipient",
        E::AssertionIssuerMismatch { .. } | E::ResponseIssuerMismatch { .. } => "issuer",
        E::AssertionConditionAudienceRestrictionFailed { .. } => "audience",
        E::AssertionExpired { .. }
        | E::ResponseExpired { .. }
        | E::AssertionConditionExpired { .. }
        | E::AssertionSubjectConfirmationExpired { .. } => "expired",
        E::AssertionConditionExpiredBefore { .. }
        | E::AssertionSubjectConfirmationExpiredBefore { .. } => "not_yet_valid",
        E::AssertionInResponseToInvalid { .. } | E::ResponseInResponseToInvalid { .. } => {
            "in_response_to"
        }
        E::ResponseBadStatusCode { .. } => "status",
        E::AssertionBearerSubjectConfirmationMissing | E::AssertionSubjectConfirmationMissing => {
            "subject_confirmation"
        }
        E::EncryptedAssertionsNotYetSupported
        | E::MissingPrivateKeySP
        | E::MissingEncryptedKeyInfo
        | E::MissingEncryptedValueInfo
        | E::EncryptedAssertionKeyMethodUnsupported { .. }
        | E::EncryptedAssertionValueMethodUnsupported { .. }
        | E::EncryptedAssertionInvalid
        | E::FailedToDecryptAssertion => "decryption",
        _ => "malformed",
    }
}

fn nonce_hash(nonce: &str) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(nonce.as_bytes()))
}

/// How long an assertion id must be remembered: until its latest NotOnOrAfter plus the
/// skew, at least a minute and at most a day.
fn assertion_lifetime(assertion: &Assertion) -> Duration {
    let now = chrono::Utc::now();
    let mut until = assertion
        .conditions
        .as_ref()
        .and_then(|c| c.not_on_or_after);
    for sc in assertion
        .subject
        .iter()
        .flat_map(|s| s.subject_confirmations.iter().flatten())
    {
        if let Some(t) = sc
            .subject_confirmation_data
            .as_ref()
            .and_then(|d| d.not_on_or_after)
        {
            until = Some(until.map_or(t, |u| u.max(t)));
        }
    }
    let secs = until.map_or(3600, |u| {
        (u - now).num_seconds() + MAX_SKEW.as_secs() as i64
    });
    Duration::from_secs(secs.clamp(60, 86_400) as u64)
}

/// The `InResponseTo` of the top-level Response element, if any. Read before
/// validation only to look up the pending request; samael then checks it. IDs are
/// NCNames, so the raw attribute bytes are the value.
fn response_in_response_to(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event() {
            Ok(quick_xml::events::Event::Start(e)) | Ok(quick_xml::events::Event::Empty(e)) => {
                return e
                    .try_get_attribute("InResponseTo")
                    .ok()
                    .flatten()
                    .and_then(|a| String::from_utf8(a.value.to_vec()).ok());
            }
            Ok(quick_xml::events::Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// The request a (verified) assertion says it answers, from its subject confirmation.
fn assertion_in_response_to(assertion: &Assertion) -> Option<&str> {
    assertion
        .subject
        .as_ref()?
        .subject_confirmations
        .as_ref()?
        .iter()
        .find_map(|c| {
            c.subject_confirmation_data
                .as_ref()?
                .in_response_to
                .as_deref()
        })
}

/// The `ID` of the Assertion that is a direct child of the root Response (the shell
/// check has made sure there is exactly one, or one EncryptedAssertion, which
/// decryption has replaced by then).
fn root_assertion_id(xml: &str) -> Option<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) | Ok(Event::Empty(e))
                if depth == 1 && e.local_name().as_ref() == b"Assertion" =>
            {
                return e
                    .try_get_attribute("ID")
                    .ok()
                    .flatten()
                    .and_then(|a| String::from_utf8(a.value.to_vec()).ok());
            }
            Ok(Event::Start(_)) => depth += 1,
            Ok(Event::End(_)) => depth = depth.saturating_sub(1),
            Ok(Event::Eof) | Err(_) => return None,
            _ => {}
        }
    }
}

/// Whether the root Response carries its own signature: a `ds:Signature` child of the
/// root whose Reference names the Response's `ID`. Whether that signature verifies is
/// for xmlsec to say; this decides only which verification applies.
fn response_signed_itself(xml: &str) -> bool {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut depth = 0usize;
    let mut root_id: Option<Vec<u8>> = None;
    // Depth of the open root-level Signature.
    let mut in_signature = false;
    loop {
        let event = match reader.read_event() {
            Ok(e) => e,
            Err(_) => return false,
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name();
                if depth == 0 {
                    root_id = e
                        .try_get_attribute("ID")
                        .ok()
                        .flatten()
                        .map(|a| a.value.to_vec());
                }
                if depth == 1 && local.as_ref() == b"Signature" {
                    in_signature = matches!(event, Event::Start(_));
                }
                if in_signature
                    && local.as_ref() == b"Reference"
                    && let (Some(id), Ok(Some(uri))) = (&root_id, e.try_get_attribute("URI"))
                    && uri.value.strip_prefix(b"#") == Some(id.as_slice())
                {
                    return true;
                }
                if matches!(event, Event::Start(_)) {
                    depth += 1;
                }
            }
            Event::End(_) => {
                depth = depth.saturating_sub(1);
                if depth == 1 {
                    in_signature = false;
                }
            }
            Event::Eof => return false,
            _ => {}
        }
    }
}

/// Whether the Assertion with ID `id` carries its own signature: a `Signature` that is
/// a direct child of that Assertion and references `#id`. (samael has verified every
/// signature by the time this runs; this only decides which element was signed.)
fn assertion_signed_itself(xml: &str, id: &str) -> bool {
    use quick_xml::events::Event;
    let target = format!("#{id}");
    let mut reader = quick_xml::Reader::from_str(xml);
    // (local name, is the target Assertion) for each open element.
    let mut stack: Vec<(Vec<u8>, bool)> = Vec::new();
    // Depth of the Signature that is a direct child of the target Assertion.
    let mut in_signature: Option<usize> = None;
    loop {
        let event = match reader.read_event() {
            Ok(e) => e,
            Err(_) => return false,
        };
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name().as_ref().to_vec();
                let is_target = local == b"Assertion"
                    && e.try_get_attribute("ID")
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.value.as_ref() == id.as_bytes());
                let child_of_target = stack.last().is_some_and(|(_, t)| *t);
                if local == b"Signature" && child_of_target {
                    in_signature = Some(stack.len());
                }
                if local == b"Reference"
                    && in_signature.is_some()
                    && e.try_get_attribute("URI")
                        .ok()
                        .flatten()
                        .is_some_and(|a| a.value.as_ref() == target.as_bytes())
                {
                    return true;
                }
                // Self-closing elements open nothing.
                if matches!(event, Event::Start(_)) {
                    stack.push((local, is_target));
                } else if local == b"Signature" && child_of_target {
                    in_signature = None;
                }
            }
            Event::End(_) => {
                stack.pop();
                if in_signature.is_some_and(|d| stack.len() <= d) {
                    in_signature = None;
                }
            }
            Event::Eof => return false,
            _ => {}
        }
    }
}

/// Every `SignatureMethod` and `DigestMethod` algorithm of a signature in the document
/// (inside a `SignedInfo`: a `DigestMethod` elsewhere, such as an encrypted key's OAEP
/// digest, signs nothing).
fn signature_algorithms(xml: &str) -> Vec<String> {
    use quick_xml::events::Event;
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut out = Vec::new();
    let mut in_signed_info = 0usize;
    loop {
        match reader.read_event() {
            Ok(Event::Start(e)) if e.local_name().as_ref() == b"SignedInfo" => {
                in_signed_info += 1;
            }
            Ok(Event::End(e)) if e.local_name().as_ref() == b"SignedInfo" => {
                in_signed_info = in_signed_info.saturating_sub(1);
            }
            Ok(Event::Start(e)) | Ok(Event::Empty(e))
                if in_signed_info > 0
                    && matches!(
                        e.local_name().as_ref(),
                        b"SignatureMethod" | b"DigestMethod"
                    ) =>
            {
                if let Ok(Some(a)) = e.try_get_attribute("Algorithm") {
                    out.push(String::from_utf8_lossy(a.value.as_ref()).into_owned());
                }
            }
            Ok(Event::Eof) | Err(_) => return out,
            _ => {}
        }
    }
}

/// What a legacy (`allow_sha1`) tenant accepts: SHA-1 with RSA, and everything a
/// strict tenant accepts; never MD5, DSA or HMAC.
const LEGACY_ALGORITHMS: [&str; 11] = [
    "http://www.w3.org/2000/09/xmldsig#rsa-sha1",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
    "http://www.w3.org/2000/09/xmldsig#sha1",
    "http://www.w3.org/2001/04/xmlenc#sha256",
    "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512",
];

/// What every other tenant accepts: [`LEGACY_ALGORITHMS`] without SHA-1.
const STRICT_ALGORITHMS: [&str; 9] = [
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#rsa-sha512",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha256",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha384",
    "http://www.w3.org/2001/04/xmldsig-more#ecdsa-sha512",
    "http://www.w3.org/2001/04/xmlenc#sha256",
    "http://www.w3.org/2001/04/xmldsig-more#sha384",
    "http://www.w3.org/2001/04/xmlenc#sha512",
];

const PROTOCOL_NS: &[u8] = b"urn:oasis:names:tc:SAML:2.0:protocol";
const ASSERTION_NS: &[u8] = b"urn:oasis:names:tc:SAML:2.0:assertion";
const STATUS_SUCCESS: &str = "urn:oasis:names:tc:SAML:2.0:status:Success";

/// The part a element plays in the Response shell.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Part {
    Response,
    Issuer,
    Status,
    Assertion,
    Other,
}

/// Checks the Response around the assertion, which no signature may cover (when only
/// the Assertion is signed, samael reads none of it): a present `Destination` must be
/// the ACS URL, a present `Issuer` the IdP, the top-level `StatusCode` Success, and the
/// Response must hold exactly one `Assertion` or `EncryptedAssertion`, as its child.
/// Elements are told apart by namespace and local name as a namespace-aware parser
/// resolves them, so prefixes, comments and whitespace cannot hide or fake one; an
/// assertion anywhere else in the shell (in `Extensions`, say) is refused too.
fn check_shell(xml: &str, acs_url: &str, idp_entity_id: Option<&str>) -> Result<(), AcsError> {
    use quick_xml::events::Event;
    use quick_xml::name::{Namespace, ResolveResult};
    let refuse = |code: &'static str, detail: String| AcsError::Rejected { code, detail };
    let malformed = |detail: &str| refuse("malformed", detail.to_owned());
    let mut reader = quick_xml::NsReader::from_str(xml);
    // The part of each open element, the root first.
    let mut path: Vec<Part> = Vec::new();
    let mut root_seen = false;
    let mut destination: Option<String> = None;
    let (mut assertions, mut issuers, mut statuses, mut codes) = (0usize, 0usize, 0usize, 0usize);
    let mut issuer = String::new();
    let mut status: Option<String> = None;
    loop {
        let (ns, event) = reader
            .read_resolved_event()
            .map_err(|e| malformed(&format!("not well-formed XML: {e}")))?;
        let in_ns = |want: &[u8]| matches!(ns, ResolveResult::Bound(Namespace(n)) if n == want);
        match event {
            Event::Start(ref e) | Event::Empty(ref e) => {
                let local = e.local_name();
                let local = local.as_ref();
                let is_assertion =
                    in_ns(ASSERTION_NS) && matches!(local, b"Assertion" | b"EncryptedAssertion");
                let part = match (path.as_slice(), path.get(1)) {
                    ([], _) => {
                        if root_seen || !(in_ns(PROTOCOL_NS) && local == b"Response") {
                            return Err(malformed("the document is not one samlp:Response"));
                        }
                        root_seen = true;
                        for a in e.attributes() {
                            let a = a.map_err(|e| malformed(&format!("bad attribute: {e}")))?;
                            if a.key.as_ref() == b"Destination" {
                                let v = a
                                    .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                    .map_err(|e| malformed(&format!("bad Destination: {e}")))?;
                                destination = Some(v.into_owned());
                            }
                        }
                        Part::Response
                    }
                    ([Part::Response], _) if is_assertion => {
                        assertions += 1;
                        Part::Assertion
                    }
                    ([Part::Response], _) if in_ns(ASSERTION_NS) && local == b"Issuer" => {
                        issuers += 1;
                        Part::Issuer
                    }
                    ([Part::Response], _) if in_ns(PROTOCOL_NS) && local == b"Status" => {
                        statuses += 1;
                        Part::Status
                    }
                    // samael matches elements by local name alone: a look-alike in
                    // another namespace would be read by it and unseen here.
                    ([Part::Response], _)
                        if matches!(
                            local,
                            b"Issuer" | b"Status" | b"Assertion" | b"EncryptedAssertion"
                        ) =>
                    {
                        return Err(malformed(
                            "a Response child named like a SAML element, in another namespace",
                        ));
                    }
                    // Whatever the assertion holds is its own business (and signed).
                    (_, Some(Part::Assertion)) => Part::Other,
                    ([Part::Response, Part::Status], _)
                        if in_ns(PROTOCOL_NS) && local == b"StatusCode" =>
                    {
                        codes += 1;
                        if let Some(a) = e
                            .try_get_attribute("Value")
                            .map_err(|e| malformed(&format!("bad StatusCode: {e}")))?
                        {
                            let v = a
                                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                                .map_err(|e| malformed(&format!("bad StatusCode: {e}")))?;
                            status = Some(v.into_owned());
                        }
                        Part::Other
                    }
                    _ if is_assertion => {
                        return Err(malformed("an assertion outside its place in the Response"));
                    }
                    ([Part::Response, Part::Issuer], _) => {
                        return Err(malformed("markup inside the Response Issuer"));
                    }
                    _ => Part::Other,
                };
                if matches!(event, Event::Start(_)) {
                    path.push(part);
                }
            }
            Event::End(_) => {
                path.pop();
            }
            Event::Text(ref t) if path.last() == Some(&Part::Issuer) => {
                let text = t
                    .xml10_content()
                    .map_err(|e| malformed(&format!("bad Issuer: {e}")))?;
                issuer.push_str(&text);
            }
            Event::CData(ref t) if path.last() == Some(&Part::Issuer) => {
                let text = t
                    .decode()
                    .map_err(|e| malformed(&format!("bad Issuer: {e}")))?;
                issuer.push_str(&text);
            }
            Event::GeneralRef(ref r) if path.last() == Some(&Part::Issuer) => {
                let c = r
                    .resolve_char_ref()
                    .map_err(|e| malformed(&format!("bad Issuer: {e}")))?;
                match c {
                    Some(c) => issuer.push(c),
                    None => {
                        let name = r
                            .decode()
                            .map_err(|e| malformed(&format!("bad Issuer: {e}")))?;
                        let text = quick_xml::escape::resolve_predefined_entity(&name)
                            .ok_or_else(|| malformed("an entity reference in the Issuer"))?;
                        issuer.push_str(text);
                    }
                }
            }
            // A DTD has no place in SAML and is the door to entity tricks.
            Event::DocType(_) => return Err(malformed("a DOCTYPE in the Response")),
            Event::Eof => break,
            _ => {}
        }
    }
    if !root_seen || !path.is_empty() {
        return Err(malformed("the document is not one samlp:Response"));
    }
    if let Some(d) = destination.filter(|d| d != acs_url) {
        return Err(refuse(
            "destination",
            format!("Response Destination {d:?} is not this ACS ({acs_url})"),
        ));
    }
    if issuers > 1 {
        return Err(malformed("more than one Response Issuer"));
    }
    if let Some(idp) = idp_entity_id {
        let got = issuer.trim();
        if issuers == 1 && got != idp {
            return Err(refuse(
                "issuer",
                format!("Response Issuer {got:?} is not the IdP ({idp})"),
            ));
        }
    }
    if statuses > 1 || codes > 1 {
        return Err(malformed("more than one top-level Status or StatusCode"));
    }
    match status {
        Some(s) if s == STATUS_SUCCESS => {}
        Some(s) => {
            return Err(refuse(
                "status",
                format!("top-level StatusCode is {s:?}, not Success"),
            ));
        }
        None => return Err(refuse("status", "the Response has no StatusCode".into())),
    }
    if assertions != 1 {
        return Err(malformed(&format!(
            "the Response holds {assertions} assertions; exactly one is accepted"
        )));
    }
    Ok(())
}

/// A `return_to` or RelayState that is a same-origin path, or None: `/x?y` is kept;
/// `//evil.example`, `/\evil`, `https://…` and anything with control characters are
/// refused, so a login can never redirect off-site.
pub fn safe_return_to(candidate: &str) -> Option<String> {
    let ok = candidate.starts_with('/')
        && !candidate.starts_with("//")
        && !candidate.starts_with("/\\")
        && !candidate
            .bytes()
            .any(|b| b.is_ascii_control() || b == b'\\')
        && candidate.len() <= 2048;
    ok.then(|| candidate.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_to_stays_on_this_origin() {
        assert_eq!(
            safe_return_to("/reports?y=1").as_deref(),
            Some("/reports?y=1")
        );
        for bad in [
            "//evil.example/x",
            "/\\evil.example",
            "https://evil.example",
            "evil",
            "/a\r\nb",
            "",
        ] {
            assert_eq!(safe_return_to(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_signature_inside_the_assertion_counts_as_the_assertion_signed() {
        let signed = r##"<Response><Assertion ID="a1"><Issuer>x</Issuer><ds:Signature><ds:SignedInfo><ds:Reference URI="#a1"/></ds:SignedInfo></ds:Signature></Assertion></Response>"##;
        assert!(assertion_signed_itself(signed, "a1"));
        // A Reference elsewhere (a stray one, or the Response's own signature) does not.
        let stray = r##"<Response><x:Reference URI="#a1"/><Assertion ID="a1"><Issuer>x</Issuer></Assertion></Response>"##;
        assert!(!assertion_signed_itself(stray, "a1"));
        let response_signed = r##"<Response ID="r"><ds:Signature><ds:SignedInfo><ds:Reference URI="#a1"/></ds:SignedInfo></ds:Signature><Assertion ID="a1"/></Response>"##;
        assert!(!assertion_signed_itself(response_signed, "a1"));
        let other = r##"<Response><Assertion ID="a2"><ds:Signature><ds:SignedInfo><ds:Reference URI="#a1"/></ds:SignedInfo></ds:Signature></Assertion></Response>"##;
        assert!(!assertion_signed_itself(other, "a1"));
    }

    #[test]
    fn algorithms_are_collected_for_the_legacy_allow_list() {
        let xml = r##"<S><SignedInfo><SignatureMethod Algorithm="http://www.w3.org/2001/04/xmldsig-more#rsa-md5"/><DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"/></SignedInfo><EncryptionMethod><DigestMethod Algorithm="http://www.w3.org/2000/09/xmldsig#sha1"/></EncryptionMethod></S>"##;
        let found = signature_algorithms(xml);
        assert_eq!(found.len(), 2);
        assert!(
            !LEGACY_ALGORITHMS.contains(&found[0].as_str()),
            "MD5 is never accepted"
        );
        assert!(LEGACY_ALGORITHMS.contains(&found[1].as_str()));
    }

    const ACS: &str = "https://sp.example/acs";
    const IDP: &str = "https://idp.example";

    fn shell(inner: &str) -> Result<(), &'static str> {
        let xml = format!(
            r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" Destination="{ACS}">{inner}</samlp:Response>"#
        );
        check_shell(&xml, ACS, Some(IDP)).map_err(|e| e.code())
    }

    const OK_STATUS: &str = r#"<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:Status>"#;
    const ASSERTION: &str =
        r#"<saml:Assertion ID="a"><saml:Issuer>x</saml:Issuer></saml:Assertion>"#;

    #[test]
    fn the_response_shell_is_read_by_namespace_not_by_spelling() {
        assert_eq!(
            shell(&format!(
                "<saml:Issuer>{IDP}</saml:Issuer>{OK_STATUS}{ASSERTION}"
            )),
            Ok(())
        );
        // Another prefix, or the default namespace, is the same element.
        let other_prefix =
            r#"<x:Assertion xmlns:x="urn:oasis:names:tc:SAML:2.0:assertion" ID="b"/>"#;
        assert_eq!(
            shell(&format!("{OK_STATUS}{ASSERTION}{other_prefix}")),
            Err("malformed")
        );
        let default_ns = r#"<Assertion xmlns="urn:oasis:names:tc:SAML:2.0:assertion" ID="b"/>"#;
        assert_eq!(
            shell(&format!("{OK_STATUS}{default_ns}{ASSERTION}")),
            Err("malformed")
        );
        // Inside a comment it is not one.
        assert_eq!(
            shell(&format!("{OK_STATUS}<!--{ASSERTION}-->{ASSERTION}")),
            Ok(())
        );
        // The same local name in another namespace is refused: samael, which matches by
        // local name, would read it as the real thing.
        for foreign in [
            r#"<x:Assertion xmlns:x="urn:example:other"/>"#,
            r#"<x:Issuer xmlns:x="urn:example:other">https://evil</x:Issuer>"#,
            r#"<x:Status xmlns:x="urn:example:other"/>"#,
            r#"<EncryptedAssertion/>"#,
        ] {
            assert_eq!(
                shell(&format!("{OK_STATUS}{foreign}{ASSERTION}")),
                Err("malformed"),
                "{foreign}"
            );
        }
        // Nested in the assertion (Advice) is the assertion's business; anywhere else
        // in the shell it is refused.
        let advice = r#"<saml:Assertion ID="a"><saml:Advice><saml:Assertion ID="n"/></saml:Advice></saml:Assertion>"#;
        assert_eq!(shell(&format!("{OK_STATUS}{advice}")), Ok(()));
        assert_eq!(
            shell(&format!(
                "<samlp:Extensions>{ASSERTION}</samlp:Extensions>{OK_STATUS}{ASSERTION}"
            )),
            Err("malformed")
        );
        assert_eq!(shell(OK_STATUS), Err("malformed"), "no assertion");
        assert_eq!(
            shell(&format!("{OK_STATUS}<saml:EncryptedAssertion/>")),
            Ok(()),
            "an encrypted one counts"
        );
    }

    #[test]
    fn the_issuer_status_and_destination_of_the_shell_are_checked() {
        // The Issuer's text is what an XML parser reads: a comment or a character
        // reference inside changes nothing, whitespace around it neither.
        let split = "<saml:Issuer> https://idp<!-- x -->&#46;example </saml:Issuer>";
        assert_eq!(shell(&format!("{split}{OK_STATUS}{ASSERTION}")), Ok(()));
        let cdata = "<saml:Issuer><![CDATA[https://idp.example]]></saml:Issuer>";
        assert_eq!(shell(&format!("{cdata}{OK_STATUS}{ASSERTION}")), Ok(()));
        let wrong = "<saml:Issuer>https://idp.example.evil</saml:Issuer>";
        assert_eq!(
            shell(&format!("{wrong}{OK_STATUS}{ASSERTION}")),
            Err("issuer")
        );
        let twice = format!("<saml:Issuer>{IDP}</saml:Issuer><saml:Issuer>{IDP}</saml:Issuer>");
        assert_eq!(
            shell(&format!("{twice}{OK_STATUS}{ASSERTION}")),
            Err("malformed")
        );
        let responder = r#"<samlp:Status><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Responder"><samlp:StatusCode Value="urn:oasis:names:tc:SAML:2.0:status:Success"/></samlp:StatusCode></samlp:Status>"#;
        assert_eq!(shell(&format!("{responder}{ASSERTION}")), Err("status"));
        assert_eq!(shell(ASSERTION), Err("status"), "no Status");
        assert_eq!(
            shell(&format!("{OK_STATUS}{OK_STATUS}{ASSERTION}")),
            Err("malformed")
        );
        let elsewhere = format!(
            r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" Destination="https://sp.example/acs/../other">{OK_STATUS}{ASSERTION}</samlp:Response>"#
        );
        assert_eq!(
            check_shell(&elsewhere, ACS, Some(IDP)).map_err(|e| e.code()),
            Err("destination")
        );
        let no_destination = format!(
            r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion">{OK_STATUS}{ASSERTION}</samlp:Response>"#
        );
        assert!(check_shell(&no_destination, ACS, Some(IDP)).is_ok());
    }

    #[test]
    fn anything_but_one_well_formed_response_is_malformed() {
        for bad in [
            "",
            "not xml",
            ASSERTION,
            "<samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\">",
            "<!DOCTYPE r [<!ENTITY e \"x\">]><samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\"/>",
            "<samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\"/><samlp:Response xmlns:samlp=\"urn:oasis:names:tc:SAML:2.0:protocol\"/>",
        ] {
            assert_eq!(
                check_shell(bad, ACS, Some(IDP)).map_err(|e| e.code()),
                Err("malformed"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn identity_values_are_refused_before_trimming() {
        assert_eq!(clean("uid", Some(" a ")).unwrap().as_deref(), Some("a"));
        assert_eq!(clean("uid", Some("  ")).unwrap(), None);
        assert_eq!(clean("uid", Some("a\tb")).unwrap().as_deref(), Some("a\tb"));
        for bad in ["a\n", "\ra", "a\u{7f}b", "a\u{0}", "a\u{1b}"] {
            assert!(
                matches!(clean("uid", Some(bad)), Err(AcsError::MalformedAttribute(ref n)) if n == "uid"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn in_response_to_is_read_from_the_root_element() {
        let xml = r#"<samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" ID="r" InResponseTo="_abc"><x InResponseTo="_other"/></samlp:Response>"#;
        assert_eq!(response_in_response_to(xml).as_deref(), Some("_abc"));
        assert_eq!(response_in_response_to("<Response/>"), None);
    }
}
