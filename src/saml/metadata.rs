//! IdP metadata fetched from a URL (`idp_metadata_url`), so that an IdP can roll its
//! signing certificate over without anyone editing idgate's config.
//!
//! Each such tenant has a slot that holds its SP, empty until metadata was first had;
//! a background task per tenant fills and refreshes it. The last good document is kept
//! in the store, so a replica that starts while the IdP is down still serves logins.
//! A document that cannot be fetched, is not plain metadata, fails its signature or has
//! expired never replaces the last good one: a broken or hostile IdP endpoint can stop
//! key rollover, but cannot take logins down or swap in its own certificates.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http_body_util::{BodyExt, Full};
use samael::crypto::{
    AllowedSignatureAlgorithm, CertificateDer, Crypto, CryptoProvider, ReduceMode,
};
use samael::metadata::EntityDescriptor;
use tokio::sync::watch;

use super::SamlTenant;
use crate::config::{Config, IdpSource, MetadataUrl, TenantConfig};
use crate::maestrano::worker::Client;
use crate::metrics::Metrics;
use crate::store::{Records, Store};

/// Real IdP metadata is a few KiB (a federation aggregate is not accepted anyway);
/// anything larger is refused unread.
pub const MAX_METADATA_BYTES: usize = 1 << 20;

/// The longest wait for the IdP's answer, and again for its body: a hung IdP must not
/// stall the refresh loop.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// How soon a failed fetch is tried again, at the most: the IdP may come back soon, and
/// a replica without any metadata cannot serve logins meanwhile.
const RETRY: Duration = Duration::from_secs(30);

/// The shortest wait between two fetches, whatever `cacheDuration` says, so that a
/// document asking for `PT0S` cannot make idgate hammer the IdP.
const MIN_WAIT: Duration = Duration::from_secs(1);

/// Why a metadata document was not taken. [`MetadataError::result`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    /// The URL could not be fetched, answered other than 2xx, or sent too much.
    #[error("cannot fetch the IdP metadata: {0}")]
    Fetch(String),
    /// The document is not usable metadata (too large, a DOCTYPE, not an
    /// EntityDescriptor, no signing certificate or SSO endpoint).
    #[error("the IdP metadata is not usable: {0}")]
    Invalid(String),
    /// `idp_metadata_signer` is set and the document's signature does not verify with
    /// it (or covers something other than the whole EntityDescriptor).
    #[error("the IdP metadata's signature does not verify with idp_metadata_signer")]
    Signature,
    /// `validUntil` has passed.
    #[error("the IdP metadata expired at {0} (validUntil)")]
    Expired(String),
}

impl MetadataError {
    /// The `result` label of `idgate_saml_metadata_refreshes_total`.
    pub fn result(&self) -> &'static str {
        match self {
            MetadataError::Fetch(_) => "error",
            MetadataError::Invalid(_) => "invalid",
            MetadataError::Signature => "signature",
            MetadataError::Expired(_) => "expired",
        }
    }
}

/// A document that passed [`check`].
#[derive(Debug)]
pub struct Checked {
    /// The metadata, read from signed content only when a signer is configured.
    pub entity: EntityDescriptor,
    /// How long the document may be used before it must be fetched again, from its
    /// `validUntil` and `cacheDuration`.
    pub max_age: Option<Duration>,
}

/// Refuses anything but one plain, unexpired (and, with `signer`, signed) SAML
/// EntityDescriptor. With a signer, only what the signature covers is read, so content
/// wrapped around a signed document cannot add certificates.
pub fn check(
    xml: &str,
    signer: Option<&[String]>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Checked, MetadataError> {
    if xml.len() > MAX_METADATA_BYTES {
        return Err(MetadataError::Invalid(format!(
            "larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    // Entities are where XML bombs and external fetches hide; metadata needs none, so
    // a DTD of any kind is refused before any parser sees the document.
    let lower = xml.to_ascii_lowercase();
    if lower.contains("<!doctype") || lower.contains("<!entity") {
        return Err(MetadataError::Invalid(
            "a DOCTYPE or ENTITY declaration is not accepted".into(),
        ));
    }
    let verified;
    let xml = match signer {
        None => xml,
        Some(pems) => {
            let certs: Vec<CertificateDer> = pems
                .iter()
                .filter_map(|pem| samael::crypto::decode_x509_cert(&super::cert_base64(pem)).ok())
                .collect();
            if certs.is_empty() {
                return Err(MetadataError::Signature);
            }
            verified = Crypto::reduce_xml_to_signed_with_allowed_algorithms(
                xml,
                &certs,
                ReduceMode::ValidateAndMarkNoAncestors,
                Some(&SIGNATURE_ALGORITHMS),
            )
            .map_err(|_| MetadataError::Signature)?;
            // The signed part must be the whole EntityDescriptor, not a piece of it.
            if root_name(&verified).as_deref() != Some("EntityDescriptor") {
                return Err(MetadataError::Signature);
            }
            verified.as_str()
        }
    };
    match root_name(xml).as_deref() {
        Some("EntityDescriptor") => {}
        Some(other) => {
            return Err(MetadataError::Invalid(format!(
                "the root element is {other}, not one EntityDescriptor"
            )));
        }
        None => return Err(MetadataError::Invalid("not XML".into())),
    }
    let entity: EntityDescriptor = xml
        .parse()
        .map_err(|e| MetadataError::Invalid(format!("cannot parse: {e}")))?;
    let valid_until = std::iter::once(entity.valid_until)
        .chain(
            entity
                .idp_sso_descriptors
                .iter()
                .flatten()
                .map(|d| d.valid_until),
        )
        .flatten()
        .min();
    let mut max_age = None;
    if let Some(until) = valid_until {
        if until <= now {
            return Err(MetadataError::Expired(until.to_rfc3339()));
        }
        max_age = (until - now).to_std().ok();
    }
    if let Some(cache) = entity.cache_duration.as_deref().and_then(xs_duration) {
        max_age = Some(max_age.map_or(cache, |m: Duration| m.min(cache)));
    }
    Ok(Checked { entity, max_age })
}

/// The signature algorithms accepted on metadata: no SHA-1, which is no protection
/// against a forged certificate list.
const SIGNATURE_ALGORITHMS: [AllowedSignatureAlgorithm; 6] = [
    AllowedSignatureAlgorithm::RsaSha256,
    AllowedSignatureAlgorithm::RsaSha384,
    AllowedSignatureAlgorithm::RsaSha512,
    AllowedSignatureAlgorithm::EcdsaSha256,
    AllowedSignatureAlgorithm::EcdsaSha384,
    AllowedSignatureAlgorithm::EcdsaSha512,
];

/// The local name of the document's root element.
fn root_name(xml: &str) -> Option<String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    loop {
        match reader.read_event().ok()? {
            quick_xml::events::Event::Start(e) | quick_xml::events::Event::Empty(e) => {
                return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
            }
            quick_xml::events::Event::Eof => return None,
            _ => {}
        }
    }
}

/// An `xs:duration` such as `PT1H`, `P1D` or `PT1.5S`; years and months count as 365
/// and 30 days (it only bounds a cache). `None` for anything else, which is then
/// ignored like an absent `cacheDuration`.
fn xs_duration(text: &str) -> Option<Duration> {
    let rest = text.trim().strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) if !t.is_empty() => (d, Some(t)),
        Some(_) => return None,
        None => (rest, None),
    };
    let mut secs = 0f64;
    let mut any = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        let mut unit_index = 0;
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
                continue;
            }
            let pos = units[unit_index..].iter().position(|(u, _)| *u == c)?;
            unit_index += pos + 1;
            let value: f64 = number.parse().ok()?;
            secs += value * units[unit_index - 1].1;
            number.clear();
            any = true;
        }
        number.is_empty().then_some(())
    };
    take(
        date,
        &[
            ('Y', 365.0 * 86400.0),
            ('M', 30.0 * 86400.0),
            ('D', 86400.0),
        ],
    )?;
    if let Some(t) = time {
        take(t, &[('H', 3600.0), ('M', 60.0), ('S', 1.0)])?;
    }
    (any && secs.is_finite()).then(|| Duration::from_secs_f64(secs.min(1e9)))
}

/// The SP of a tenant whose metadata comes from a URL: empty until metadata was first
/// had, then replaced whole by every refresh that changes it; with when it was last
/// refreshed, for the admin API.
pub type Slot = Arc<SlotState>;

/// What a [`Slot`] holds.
#[derive(Default)]
pub struct SlotState {
    sp: ArcSwapOption<SamlTenant>,
    /// The SP metadata of the configuration the refresher builds `sp` from (the one
    /// the process started with: a reload does not change a URL tenant's SP), so that
    /// what is published always matches the keys and entity id in use.
    sp_metadata: Option<bytes::Bytes>,
    /// Unix seconds of the last good fetch (or load of the stored copy); 0: never.
    refreshed_at: std::sync::atomic::AtomicI64,
    /// Whether the last refresh failed while an older copy is in use.
    stale: std::sync::atomic::AtomicBool,
}

/// How current a URL tenant's IdP metadata is, as the admin API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Never had: the tenant's logins answer 503.
    None,
    /// The last refresh succeeded.
    Ok,
    /// The last refresh failed; an older good copy is in use.
    Stale,
}

impl SlotState {
    /// The SP metadata of the configuration this slot's SP is built from.
    pub fn sp_metadata(&self) -> Option<&bytes::Bytes> {
        self.sp_metadata.as_ref()
    }

    /// The SP built from the metadata in use, if any.
    pub fn load_full(&self) -> Option<Arc<SamlTenant>> {
        self.sp.load_full()
    }

    /// How current the metadata is, and when it was last had (unix seconds).
    pub fn freshness(&self) -> (Freshness, Option<i64>) {
        use std::sync::atomic::Ordering::Relaxed;
        let at = self.refreshed_at.load(Relaxed);
        let at = (at > 0).then_some(at);
        if self.sp.load().is_none() {
            (Freshness::None, at)
        } else if self.stale.load(Relaxed) {
            (Freshness::Stale, at)
        } else {
            (Freshness::Ok, at)
        }
    }

    fn had(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.refreshed_at.store(crate::directory::now(), Relaxed);
        self.stale.store(false, Relaxed);
    }
}

/// One slot per URL tenant of the configured tenant set. They outlive the tenancy,
/// which Maestrano's developer platform may rebuild, so a rebuild keeps the SPs that
/// were fetched.
#[derive(Default)]
pub struct Slots(HashMap<String, Slot>);

impl Slots {
    /// An empty slot for every tenant of `config` with `idp_metadata_url`.
    pub fn new(config: &Config) -> Arc<Slots> {
        Arc::new(Slots(
            config
                .tenants
                .iter()
                .filter(|t| matches!(t.saml.idp, IdpSource::Url(_)))
                .map(|t| {
                    let slot = SlotState {
                        sp_metadata: crate::saml::sp_metadata_xml(t, &config.acs_url(t))
                            .ok()
                            .map(bytes::Bytes::from),
                        ..SlotState::default()
                    };
                    (t.id.clone(), Arc::new(slot))
                })
                .collect(),
        ))
    }

    /// `tenant`'s slot, if it is a URL tenant.
    pub fn get(&self, tenant: &str) -> Option<&Slot> {
        self.0.get(tenant)
    }
}

/// The store key of a tenant's last good metadata document.
fn store_key(tenant: &str) -> String {
    format!("saml:{tenant}:idp_metadata")
}

/// Keeps one URL tenant's SP in step with its IdP's metadata.
pub struct Refresher {
    tenant: TenantConfig,
    source: MetadataUrl,
    acs_url: String,
    slot: Slot,
    store: Store,
    metrics: Arc<Metrics>,
    http: Client,
    /// The document the slot was last built from, so that an unchanged refresh neither
    /// rebuilds the SP nor writes the store.
    current: Option<String>,
    /// The last good document's own bound on its age: a failed fetch is retried no
    /// later than a good one would have been.
    max_age: Option<Duration>,
}

impl Refresher {
    /// Starts refreshing every URL tenant of `config`, each in its own task, until
    /// `stop` changes.
    pub fn spawn_all(
        config: &Config,
        slots: &Slots,
        store: &Store,
        metrics: &Arc<Metrics>,
        stop: &watch::Receiver<bool>,
    ) {
        let http = crate::maestrano::worker::client();
        for t in &config.tenants {
            let (IdpSource::Url(source), Some(slot)) = (&t.saml.idp, slots.get(&t.id)) else {
                continue;
            };
            metrics.saml_metadata_tenant(&t.id);
            let refresher = Refresher {
                tenant: t.clone(),
                source: source.clone(),
                acs_url: config.acs_url(t),
                slot: slot.clone(),
                store: store.clone(),
                metrics: metrics.clone(),
                http: http.clone(),
                current: None,
                max_age: None,
            };
            tokio::spawn(refresher.run(stop.clone()));
        }
    }

    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        self.load_stored().await;
        loop {
            let wait = self.refresh().await;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return,
            }
        }
    }

    /// Takes the copy another replica (or an earlier run) kept, so logins work before
    /// the IdP is reached. It is checked like a fetched one: it may have expired, or
    /// the signer may have changed since.
    async fn load_stored(&mut self) {
        let tenant = self.tenant.id.clone();
        let tenant = tenant.as_str();
        match self.store.get_record(&store_key(tenant)).await {
            Ok(Some(xml)) => match self.apply(&xml) {
                Ok(_) => {
                    self.slot.had();
                    tracing::info!(tenant, url = %self.source.url, "IdP metadata loaded from the store's last good copy")
                }
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "the store's copy of the IdP metadata is not usable")
                }
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(tenant, error = %e, "cannot read the last good IdP metadata from the store")
            }
        }
    }

    /// One fetch: applied when it is good, counted either way. Returns how long to wait
    /// before the next one.
    async fn refresh(&mut self) -> Duration {
        let tenant = self.tenant.id.clone();
        let tenant = tenant.as_str();
        let url = self.source.url.to_string();
        let outcome = match self.fetch(&url).await {
            Ok(xml) => {
                let changed = self.current.as_deref() != Some(xml.as_str());
                self.apply(&xml).map(|max_age| (max_age, changed, xml))
            }
            Err(e) => Err(e),
        };
        match outcome {
            Ok((max_age, changed, xml)) => {
                self.metrics.saml_metadata_refresh(tenant, "ok");
                self.slot.had();
                if changed {
                    tracing::info!(tenant, url, "IdP metadata refreshed");
                    if let Err(e) = self.store.set_record(&store_key(tenant), &xml).await {
                        tracing::warn!(tenant, error = %e, "cannot keep the IdP metadata in the store; replicas that start while the IdP is down will have none");
                    }
                } else {
                    tracing::debug!(tenant, url, "IdP metadata unchanged");
                }
                max_age
                    .map_or(self.source.refresh, |m| m.min(self.source.refresh))
                    .max(MIN_WAIT)
            }
            Err(e) => {
                self.metrics.saml_metadata_refresh(tenant, e.result());
                self.slot
                    .stale
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                if self.slot.sp.load().is_some() {
                    tracing::warn!(tenant, url, result = e.result(), error = %e, "IdP metadata refresh refused; keeping the last good copy");
                } else {
                    tracing::error!(tenant, url, result = e.result(), error = %e, "no IdP metadata yet; this tenant's logins answer 503 until a good copy is fetched");
                }
                self.max_age
                    .map_or(self.source.refresh, |m| m.min(self.source.refresh))
                    .min(RETRY)
                    .max(MIN_WAIT)
            }
        }
    }

    /// GETs the document, every wait bounded by [`FETCH_TIMEOUT`] and its size by
    /// [`MAX_METADATA_BYTES`].
    async fn fetch(&self, url: &str) -> Result<String, MetadataError> {
        let req = http::Request::get(url)
            .header(
                header::ACCEPT,
                HeaderValue::from_static("application/samlmetadata+xml, application/xml"),
            )
            .body(Full::new(Bytes::new()))
            .map_err(|e| MetadataError::Fetch(format!("bad request to {url}: {e}")))?;
        let resp = tokio::time::timeout(FETCH_TIMEOUT, self.http.request(req))
            .await
            .map_err(|_| MetadataError::Fetch(format!("{url}: timed out")))?
            .map_err(|e| MetadataError::Fetch(format!("{url}: {e}")))?;
        let status = resp.status();
        if !status.is_success() {
            return Err(MetadataError::Fetch(format!("{url} answered {status}")));
        }
        let body = tokio::time::timeout(
            FETCH_TIMEOUT,
            http_body_util::Limited::new(resp.into_body(), MAX_METADATA_BYTES).collect(),
        )
        .await
        .map_err(|_| MetadataError::Fetch(format!("{url}: body timed out")))?
        .map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                MetadataError::Invalid(format!("larger than {MAX_METADATA_BYTES} bytes"))
            } else {
                MetadataError::Fetch(format!("{url}: {e}"))
            }
        })?
        .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| MetadataError::Invalid("not UTF-8".into()))
    }

    /// Checks `xml`, builds the SP from it and puts it in the slot; returns the
    /// document's own bound on its age.
    fn apply(&mut self, xml: &str) -> Result<Option<Duration>, MetadataError> {
        let checked = check(xml, self.source.signer.as_deref(), chrono::Utc::now())?;
        if self.current.as_deref() != Some(xml) || self.slot.sp.load().is_none() {
            let sp = SamlTenant::from_metadata(&self.tenant, self.acs_url.clone(), checked.entity)
                .map_err(MetadataError::Invalid)?;
            self.slot.sp.store(Some(Arc::new(sp)));
            self.current = Some(xml.to_owned());
        }
        self.max_age = checked.max_age;
        Ok(checked.max_age)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xs_durations_bound_the_cache() {
        assert_eq!(xs_duration("PT1S"), Some(Duration::from_secs(1)));
        assert_eq!(xs_duration("PT1H30M"), Some(Duration::from_secs(5400)));
        assert_eq!(xs_duration("P1D"), Some(Duration::from_secs(86400)));
        assert_eq!(xs_duration("P1DT2S"), Some(Duration::from_secs(86402)));
        assert_eq!(xs_duration("PT0.5S"), Some(Duration::from_millis(500)));
        for bad in ["", "P", "PT", "1H", "PT1X", "PT1", "PTS", "PT1S1M", "P1H"] {
            assert_eq!(xs_duration(bad), None, "{bad}");
        }
    }

    const MD: &str = r#"<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" entityID="https://idp"{attrs}><md:IDPSSODescriptor protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol"><md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp/sso"/></md:IDPSSODescriptor></md:EntityDescriptor>"#;

    fn md(attrs: &str) -> String {
        MD.replace("{attrs}", attrs)
    }

    #[test]
    fn documents_other_than_one_plain_entity_descriptor_are_refused() {
        let now = chrono::Utc::now();
        assert!(check(&md(""), None, now).is_ok());
        let doctype = format!("<!DOCTYPE x [<!ENTITY a \"b\">]>{}", md(""));
        assert!(matches!(
            check(&doctype, None, now),
            Err(MetadataError::Invalid(_))
        ));
        let big = format!("{}<!--{}-->", md(""), "x".repeat(MAX_METADATA_BYTES));
        assert!(matches!(
            check(&big, None, now),
            Err(MetadataError::Invalid(_))
        ));
        let aggregate = format!(
            r#"<md:EntitiesDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata">{}</md:EntitiesDescriptor>"#,
            md("")
        );
        assert!(matches!(
            check(&aggregate, None, now),
            Err(MetadataError::Invalid(_))
        ));
        assert!(matches!(
            check("not xml", None, now),
            Err(MetadataError::Invalid(_))
        ));
    }

    #[test]
    fn valid_until_and_cache_duration_bound_the_age() {
        let now = chrono::Utc::now();
        let past = (now - chrono::Duration::seconds(10)).to_rfc3339();
        assert!(matches!(
            check(&md(&format!(r#" validUntil="{past}""#)), None, now),
            Err(MetadataError::Expired(_))
        ));
        let soon = (now + chrono::Duration::seconds(100)).to_rfc3339();
        let c = check(
            &md(&format!(r#" validUntil="{soon}" cacheDuration="PT10S""#)),
            None,
            now,
        )
        .unwrap();
        assert_eq!(c.max_age, Some(Duration::from_secs(10)));
        let c = check(&md(&format!(r#" validUntil="{soon}""#)), None, now).unwrap();
        assert!(c.max_age.is_some_and(|d| d > Duration::from_secs(90)));
    }

    #[test]
    fn unsigned_metadata_is_refused_when_a_signer_is_set() {
        let signer = vec![include_str!("../../config/examples/example-idp.crt").to_owned()];
        assert!(matches!(
            check(&md(""), Some(&signer), chrono::Utc::now()),
            Err(MetadataError::Signature)
        ));
    }
}
