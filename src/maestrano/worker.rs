//! What idgate does for Maestrano tenants in the background, through the store's durable
//! queue: keeping each company's recurring bill in step with its state, and relaying
//! Connec! notifications to the app.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{BillingMode, Config, MaestranoConfig};
use crate::directory::Directory;
use crate::identity::Signer;
use crate::jobs::LeaseLost;
use crate::jobs::Outcome;
use crate::snapshot::Snapshots;
use crate::store::{DirectoryStore, Index, Job, JobQueue, Records, Store};

/// Queue of billing reconciliations.
pub const BILLING_QUEUE: &str = "maestrano-billing";
/// Queue of Connec! deliveries to the app.
pub const CONNEC_QUEUE: &str = "maestrano-connec";
/// Bound on one call to Maestrano or to the app.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer read from Maestrano or the app.
pub const MAX_ANSWER: usize = 1 << 20;
/// The longest one call to Maestrano or the app can take: its answer's head, then its
/// body, each within [`CALL_TIMEOUT`].
const CALL_BUDGET: Duration = Duration::from_secs(2 * CALL_TIMEOUT.as_secs());
/// How long a company's billing lock (a lease) outlives its last renewal: a call to
/// Maestrano starts only while the lease is sure to outlast it (see
/// [`crate::jobs::Lease::holds_for`]), so one whole call, and the renewals' spacing, fit
/// in it. A replica that dies mid-reconciliation holds the company's billing up this
/// long at most (it was a fixed two minutes).
pub const BILL_LOCK: Duration = Duration::from_secs(CALL_BUDGET.as_secs() + 10);
/// How often the reconciling replica renews the billing lock.
const BILL_LOCK_RENEW: Duration = Duration::from_secs(2);

/// The HTTP(S) client idgate calls Maestrano and the app with.
pub type Client = hyper_util::client::legacy::Client<
    hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
    Full<Bytes>,
>;

/// An HTTP(S) client for Maestrano's API and the app.
pub fn client() -> Client {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .build();
    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build(https)
}

/// HTTP Basic credentials, marked sensitive so that no log or debug print shows them.
pub fn basic_auth(user: &str, secret: &str) -> HeaderValue {
    let encoded = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{secret}"));
    let mut v = HeaderValue::from_str(&format!("Basic {encoded}"))
        .unwrap_or_else(|_| HeaderValue::from_static("Basic"));
    v.set_sensitive(true);
    v
}

/// One call to Maestrano (or the app): its status, headers and body, each wait bounded
/// by [`CALL_TIMEOUT`] and the body by `limit` bytes. Errors name the URL, never the
/// credentials. Traced as `idgate.maestrano` (host and path; never the query or the
/// credentials).
pub async fn call(
    http: &Client,
    method: Method,
    url: &str,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    body: Bytes,
    limit: usize,
) -> Result<(StatusCode, http::HeaderMap, Bytes), CallError> {
    let span = if crate::telemetry::enabled() {
        let parsed = url::Url::parse(url).ok();
        crate::telemetry::root_span!(
            "idgate.maestrano",
            otel.kind = "client",
            http.request.method = method.as_str(),
            server.address = parsed.as_ref().and_then(|u| u.host_str()).unwrap_or(""),
            url.path = parsed.as_ref().map_or("", |u| u.path()),
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        )
    } else {
        tracing::Span::none()
    };
    let result =
        crate::telemetry::traced(send(http, method, url, headers, body, limit), &span).await;
    match &result {
        Ok((status, _, _)) => span.record("http.response.status_code", status.as_u16()),
        Err(_) => span.record("error.type", "call_failed"),
    };
    result
}

async fn send(
    http: &Client,
    method: Method,
    url: &str,
    headers: Vec<(header::HeaderName, HeaderValue)>,
    body: Bytes,
    limit: usize,
) -> Result<(StatusCode, http::HeaderMap, Bytes), CallError> {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let req = req
        .body(Full::new(body))
        .map_err(|e| CallError(format!("bad request to {url}: {e}")))?;
    let resp = tokio::time::timeout(CALL_TIMEOUT, http.request(req))
        .await
        .map_err(|_| CallError(format!("{url}: timed out")))?
        .map_err(|e| CallError(format!("{url}: {e}")))?;
    let (parts, body) = resp.into_parts();
    let body = tokio::time::timeout(
        CALL_TIMEOUT,
        http_body_util::Limited::new(body, limit).collect(),
    )
    .await
    .map_err(|_| CallError(format!("{url}: body timed out")))?
    .map_err(|e| CallError(format!("{url}: {e}")))?
    .to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// A job on [`BILLING_QUEUE`]: bring this company's bill in line with its state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SyncBill {
    /// Tenant id.
    pub tenant: String,
    /// Group (company) id.
    pub group: String,
}

/// A job on [`CONNEC_QUEUE`]: one Connec! entity for the app.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConnecDelivery {
    /// Tenant id.
    pub tenant: String,
    /// The entity's company.
    pub group: String,
    /// Collection name (`organizations`, `people`, …).
    pub entity: String,
    /// The entity's Connec! id, when it has one.
    pub connec_id: Option<String>,
    /// The entity as Connec! sent it.
    pub body: Value,
}

/// The bill recorded for a company: the live one, and replaced ones still to cancel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct BillRecord {
    id: Option<String>,
    units: u64,
    #[serde(default)]
    cancel: Vec<String>,
}

fn bill_key(tenant: &str, group: &str) -> String {
    format!("{{{tenant}}}:bill:{group}")
}

fn local_id_key(tenant: &str, entity: &str, connec_id: &str) -> String {
    format!("{{{tenant}}}:connec:{entity}:{connec_id}")
}

/// Shared state of the background handlers.
pub struct Worker {
    store: Store,
    directory: Directory,
    /// The running configuration: Maestrano tenants and the identity keys, loaded once
    /// per job.
    snapshots: Arc<Snapshots>,
    /// Runs even with no Maestrano tenant yet: the developer platform may add some.
    devpl: bool,
    signer: Arc<Signer>,
    upstream: String,
    http: Client,
}

/// A failed call, said without secrets.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CallError(pub String);

impl Worker {
    /// Handlers for every Maestrano tenant of `config`.
    pub fn new(
        config: &Config,
        store: Store,
        signer: Arc<Signer>,
        snapshots: Arc<Snapshots>,
    ) -> Worker {
        Worker {
            directory: Directory::new(store.clone()),
            store,
            snapshots,
            devpl: config.maestrano_devpl.is_some(),
            signer,
            upstream: config
                .server
                .upstream
                .to_string()
                .trim_end_matches('/')
                .to_owned(),
            http: client(),
        }
    }

    /// The directory the handlers read.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Whether there is anything to run.
    pub fn any(&self) -> bool {
        self.devpl || !self.snapshots.load().maestrano.is_empty()
    }

    /// A job for a tenant this replica does not know (now). With the developer platform,
    /// that may be a marketplace not fetched yet (or missing from one answer): the job
    /// waits rather than being lost.
    fn unknown_tenant(&self, tenant: &str) -> Outcome {
        if self.devpl {
            Outcome::Retry(format!("tenant {tenant} is not known (yet)"))
        } else {
            Outcome::Drop(format!("tenant {tenant} is not a Maestrano tenant"))
        }
    }

    /// One call; the response's status and body (at most [`MAX_ANSWER`] bytes).
    async fn api(
        &self,
        m: &MaestranoConfig,
        method: Method,
        path: &str,
        form: Option<Vec<(&str, String)>>,
    ) -> Result<(StatusCode, Value), CallError> {
        let url = format!("{}{path}", m.api_host.as_str().trim_end_matches('/'));
        let mut headers = vec![
            (
                header::AUTHORIZATION,
                basic_auth(&m.api_id, m.api_key.expose()),
            ),
            (header::ACCEPT, HeaderValue::from_static("application/json")),
        ];
        let body = match form {
            Some(pairs) => {
                headers.push((
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/x-www-form-urlencoded"),
                ));
                let mut s = url::form_urlencoded::Serializer::new(String::new());
                for (k, v) in pairs {
                    s.append_pair(k, &v);
                }
                Bytes::from(s.finish())
            }
            None => Bytes::new(),
        };
        let (status, _, body) = call(&self.http, method, &url, headers, body, MAX_ANSWER).await?;
        let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
        Ok((status, json))
    }

    /// Runs a [`BILLING_QUEUE`] job: the company's recurring bill is created when it
    /// should have one and has none, replaced when its user count changed (per_user),
    /// and cancelled when the company is cancelled. Idempotent: what is done is read
    /// back from the recorded bill first.
    pub async fn sync_bill(&self, job: &Job) -> Outcome {
        let Ok(SyncBill { tenant, group }) = serde_json::from_str(&job.body) else {
            return Outcome::Drop("not a billing job".into());
        };
        let snap = self.snapshots.load_full();
        let Some(m) = snap.maestrano.get(&tenant) else {
            return self.unknown_tenant(&tenant);
        };
        if m.billing.mode == BillingMode::None {
            return Outcome::Done;
        }
        // One reconciliation per company at a time, across replicas: two at once would
        // both see "no bill" and both create one.
        let lock = format!("{{{tenant}}}:bill-lock:{group}");
        let lease = crate::jobs::Lease::new(BILL_LOCK);
        let work = self.reconcile(m, &tenant, &group, &lease);
        match crate::jobs::under_lease(&self.store, &lock, &lease, BILL_LOCK_RENEW, work).await {
            Ok(Ok(())) => Outcome::Done,
            Ok(Err(CallError(e))) if e.starts_with("refused:") => Outcome::Drop(e),
            Ok(Err(e)) => Outcome::Retry(e.0),
            // Another replica is reconciling this company: going on could bill it twice.
            Err(LeaseLost::Held) => {
                Outcome::Retry("another replica is billing this company".into())
            }
            Err(LeaseLost::Store(e)) => Outcome::Retry(format!("store: {e}")),
        }
    }

    async fn reconcile(
        &self,
        m: &MaestranoConfig,
        tenant: &str,
        group: &str,
        lease: &crate::jobs::Lease,
    ) -> Result<(), CallError> {
        // Before each call to Maestrano: once the lease may lapse before the call ends,
        // another replica could be reconciling this company by then. What is left undone
        // is read back from the recorded bill on the retry.
        let still_held = || {
            if lease.holds_for(CALL_BUDGET) {
                Ok(())
            } else {
                Err(CallError(
                    "the billing lock lapsed or may lapse mid-call".into(),
                ))
            }
        };
        let store_err = |e: crate::store::StoreError| CallError(format!("store: {e}"));
        let key = bill_key(tenant, group);
        let recorded: Option<BillRecord> = self
            .store
            .get_record(&key)
            .await
            .map_err(store_err)?
            .and_then(|j| serde_json::from_str(&j).ok());
        let company = self
            .store
            .get_group(tenant, group)
            .await
            .map_err(store_err)?;
        let units = match (&company, m.billing.mode) {
            (Some(g), _) if !g.active => 0,
            (None, _) => 0,
            (Some(_), BillingMode::PerUser) => {
                let ids = self
                    .store
                    .find(tenant, Index::Members, group)
                    .await
                    .map_err(store_err)?;
                self.store
                    .get_users(tenant, &ids)
                    .await
                    .map_err(store_err)?
                    .iter()
                    .filter(|u| u.active && !u.deprovisioned)
                    .count() as u64
            }
            (Some(_), _) => 1,
        };
        let mut rec = recorded.unwrap_or_default();
        let save = |rec: &BillRecord| {
            let key = key.clone();
            let empty = rec.id.is_none() && rec.cancel.is_empty();
            let json = serde_json::to_string(rec).unwrap_or_default();
            async move {
                if empty {
                    self.store.delete_record(&key).await.map_err(store_err)
                } else {
                    self.store.set_record(&key, &json).await.map_err(store_err)
                }
            }
        };
        if rec.units != units {
            if units > 0 {
                let b = &m.billing;
                let price = b.price_cents.saturating_mul(units);
                still_held()?;
                let (status, reply) = self
                    .api(
                        m,
                        Method::POST,
                        "/api/v1/account/recurring_bills",
                        Some(vec![
                            ("group_id", group.to_owned()),
                            ("price_cents", price.to_string()),
                            ("currency", b.currency.clone()),
                            ("description", b.description.clone()),
                            ("period", b.period.clone()),
                            ("frequency", "1".into()),
                            ("units", units.to_string()),
                            (
                                "start_date",
                                chrono::Utc::now().format("%Y-%m-%d").to_string(),
                            ),
                        ]),
                    )
                    .await?;
                if !status.is_success() {
                    // Maestrano refusing the bill itself (bad price, unknown group) will
                    // not change by retrying; being down or busy will.
                    let permanent = status.is_client_error()
                        && status != StatusCode::REQUEST_TIMEOUT
                        && status != StatusCode::TOO_MANY_REQUESTS;
                    let prefix = if permanent { "refused: " } else { "" };
                    return Err(CallError(format!(
                        "{prefix}creating the recurring bill: HTTP {status}"
                    )));
                }
                let id = reply["data"]["id"]
                    .as_str()
                    .or(reply["id"].as_str())
                    .ok_or_else(|| CallError("the recurring bill came back without an id".into()))?
                    .to_owned();
                tracing::info!(tenant, group, bill = %id, units, "recurring bill created");
                // The replaced bill is cancelled after the new one exists, so a company
                // is never without one while it should have one.
                rec.cancel.extend(rec.id.replace(id));
            } else {
                rec.cancel.extend(rec.id.take());
            }
            rec.units = units;
            save(&rec).await?;
        }
        let mut failed = None;
        let mut still = Vec::new();
        for id in std::mem::take(&mut rec.cancel) {
            if let Err(e) = still_held() {
                failed = Some(e.0);
                still.push(id);
                continue;
            }
            match self
                .api(
                    m,
                    Method::DELETE,
                    &format!("/api/v1/account/recurring_bills/{id}"),
                    None,
                )
                .await
            {
                Ok((status, _)) if status.is_success() || status == StatusCode::NOT_FOUND => {
                    tracing::info!(tenant, group, bill = %id, "recurring bill cancelled");
                }
                Ok((status, _)) => {
                    failed = Some(format!("cancelling bill {id}: HTTP {status}"));
                    still.push(id);
                }
                Err(e) => {
                    failed = Some(e.0);
                    still.push(id);
                }
            }
        }
        rec.cancel = still;
        save(&rec).await?;
        match failed {
            Some(e) => Err(CallError(e)),
            None => Ok(()),
        }
    }

    /// Runs a [`CONNEC_QUEUE`] job: POSTs the entity to the app. 2xx completes it (and
    /// records the app's id for the entity), 5xx or no answer retries, 4xx drops it.
    pub async fn deliver_connec(&self, job: &Job) -> Outcome {
        let Ok(d) = serde_json::from_str::<ConnecDelivery>(&job.body) else {
            return Outcome::Drop("not a Connec! delivery".into());
        };
        let snap = self.snapshots.load_full();
        let Some(m) = snap.maestrano.get(&d.tenant) else {
            return self.unknown_tenant(&d.tenant);
        };
        let now = crate::directory::now();
        let mut headers =
            match self
                .signer
                .service_headers(&snap.identity, &d.tenant, &d.group, now)
            {
                Ok(h) => h,
                Err(e) => return Outcome::Retry(format!("cannot sign: {e}")),
            };
        headers.push((
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        ));
        match HeaderValue::from_str(&d.entity) {
            Ok(v) => headers.push((header::HeaderName::from_static("x-idgate-connec-entity"), v)),
            Err(_) => return Outcome::Drop("entity name is not a header value".into()),
        }
        // Lets the app recognise a redelivery after a crash between its answer and ours.
        if let Ok(v) = HeaderValue::from_str(&job.id) {
            headers.push((header::HeaderName::from_static("x-idgate-delivery-id"), v));
        }
        let mapping = d
            .connec_id
            .as_ref()
            .map(|c| local_id_key(&d.tenant, &d.entity, c));
        if let Some(key) = &mapping {
            match self.store.get_record(key).await {
                Ok(Some(local)) => {
                    if let Ok(v) = HeaderValue::from_str(&local) {
                        headers.push((header::HeaderName::from_static("x-idgate-local-id"), v));
                    }
                }
                Ok(None) => {}
                Err(e) => return Outcome::Retry(format!("store: {e}")),
            }
        }
        let url = format!("{}{}", self.upstream, m.connec_forward_path);
        let body = Bytes::from(d.body.to_string());
        match call(&self.http, Method::POST, &url, headers, body, MAX_ANSWER).await {
            Ok((status, resp_headers, resp_body)) if status.is_success() => {
                let local = resp_headers
                    .get("x-idgate-local-id")
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
                    .or_else(|| {
                        let v: Value = serde_json::from_slice(&resp_body).ok()?;
                        match &v["id"] {
                            Value::String(s) => Some(s.clone()),
                            Value::Number(n) => Some(n.to_string()),
                            _ => None,
                        }
                    });
                if let (Some(key), Some(local)) = (&mapping, local)
                    && let Err(e) = self.store.set_record(key, &local).await
                {
                    // Delivered; only the mapping is missing, and the next notification
                    // of this entity will carry no local id. Not worth a redelivery.
                    tracing::warn!(error = %e, "cannot record the app's id for a Connec! entity");
                }
                Outcome::Done
            }
            Ok((status, _, _)) if status.is_server_error() => {
                Outcome::Retry(format!("the app answered {status}"))
            }
            Ok((status, _, _)) => Outcome::Drop(format!("the app refused the entity: {status}")),
            Err(e) => Outcome::Retry(e.0),
        }
    }

    /// Enqueues a billing reconciliation for a company of a billing tenant.
    pub async fn enqueue_bill(
        store: &Store,
        tenant: &str,
        group: &str,
    ) -> Result<(), crate::store::StoreError> {
        let body = serde_json::json!({"tenant": tenant, "group": group}).to_string();
        store.enqueue(BILLING_QUEUE, &body).await.map(|_| ())
    }

    /// Starts the handlers on the current runtime, until `stop` turns true.
    pub fn start(self: Arc<Self>, stop: tokio::sync::watch::Receiver<bool>) {
        if !self.any() {
            return;
        }
        let w = self.clone();
        crate::jobs::spawn(
            self.store.clone(),
            BILLING_QUEUE,
            stop.clone(),
            move |job| {
                let w = w.clone();
                async move { w.sync_bill(&job).await }
            },
        );
        let w = self.clone();
        crate::jobs::spawn(self.store.clone(), CONNEC_QUEUE, stop, move |job| {
            let w = w.clone();
            async move { w.deliver_connec(&job).await }
        });
    }
}
