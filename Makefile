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
SYSTEM_PACKAGES := libxmlsec1-dev libclang-dev pkg-config libssl-dev xmlsec1 redis-server redis-tools openssl ca-certificates ruby
BENCH_PACKAGES := wrk nginx-light
# The public SCIM compliance checker, in a private virtualenv under target/ (see
# tests/scim_compliance.rs); pinned so that its verdicts only change when we bump it.
SCIM2_TESTER := target/scim2-tester
SCIM2_TESTER_PKG := scim2-tester[httpx2]==0.5.2

.PHONY: demo test bench deps bench-deps toolchain apt-nodejs apt-python apt-venv

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

apt-venv:
	$(call apt_install,python3-venv)

apt-nodejs:
	$(call apt_install,nodejs)

apt-python:
	$(call apt_install,python3 python3-jwt python3-cryptography)

bench-deps: deps
	$(call apt_install,$(BENCH_PACKAGES))

toolchain:
	@command -v rustup >/dev/null 2>&1 && { \
	  rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt; \
	  rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy; \
	} || true

# The debug build: it shares artifacts with `make test` and builds in half the time of a
# release build, which is what a first-time user waits for; the demo needs no speed.
demo: deps
	$(CARGO) run --locked -- --log-format text demo

test: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) test --locked

bench: bench-deps
	$(CARGO) bench --locked --bench proxy
	$(CARGO) bench --locked --bench scim
