#!/usr/bin/env python3
"""Renders a Helm chart with a real helm binary and prints the manifests as JSON.

Used by tests/chart.rs (which makes the assertions), and handy by hand:

    target/chart-tools/venv/bin/python tests/chart/render.py \
        --helm target/chart-tools/node_modules/.bin/helm -- \
        template demo charts/idgate -f charts/idgate/ci/sidecar-values.yaml

Everything after `--` is passed to helm as is, extra flags included (tests/chart.rs adds
`--kube-version 1.30.0`, another version to check the native-sidecar guard, and
`--api-versions monitoring.coreos.com/v1/ServiceMonitor` for a ServiceMonitor). Prints one JSON object on stdout:
    {"ok": true,  "manifests": [{"source": "idgate/templates/x.yaml", "doc": {...}}, ...]}
    {"ok": false, "error": "<helm's stderr>"}
and exits 0 in both cases (a refused render is a result the caller checks); it exits 2
only when it cannot run at all. Needs PyYAML (make deps installs it into
target/chart-tools/venv).
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:  # pragma: no cover - reported to the caller
    sys.stderr.write(
        "render.py: PyYAML is missing; run `make deps` (it installs PyYAML into "
        "target/chart-tools/venv) or `pip install PyYAML`\n"
    )
    sys.exit(2)

SOURCE = re.compile(r"^# Source: (.+)$", re.MULTILINE)
SEPARATOR = re.compile(r"^---[ \t]*$", re.MULTILINE)


def split_manifests(text):
    """Splits `helm template` output into (source, document) pairs, skipping empty ones."""
    out = []
    for chunk in SEPARATOR.split(text):
        doc = yaml.safe_load(chunk)
        if doc is None:
            continue
        match = SOURCE.search(chunk)
        out.append({"source": match.group(1) if match else None, "doc": doc})
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True, help="path of the helm binary")
    parser.add_argument("helm_args", nargs=argparse.REMAINDER, help="-- then helm's arguments")
    args = parser.parse_args()
    helm_args = args.helm_args[1:] if args.helm_args[:1] == ["--"] else args.helm_args
    if not helm_args:
        parser.error("give helm's arguments after --")

    with tempfile.TemporaryDirectory(prefix="idgate-helm-") as home:
        env = dict(os.environ)
        # Keep helm away from the user's config, cache and repositories: rendering a local
        # chart needs none of them, and the result must not depend on them.
        for var, sub in (
            ("HELM_CACHE_HOME", "cache"),
            ("HELM_CONFIG_HOME", "config"),
            ("HELM_DATA_HOME", "data"),
        ):
            env[var] = os.path.join(home, sub)
        try:
            proc = subprocess.run(
                [args.helm, *helm_args], capture_output=True, text=True, env=env, timeout=120
            )
        except OSError as e:
            sys.stderr.write(f"render.py: cannot run {args.helm}: {e}\n")
            sys.exit(2)

    if proc.returncode != 0:
        json.dump({"ok": False, "error": proc.stderr.strip() or proc.stdout.strip()}, sys.stdout)
    else:
        try:
            manifests = split_manifests(proc.stdout)
        except yaml.YAMLError as e:
            json.dump(
                {"ok": False, "error": f"helm printed invalid YAML: {e}\n{proc.stdout}"},
                sys.stdout,
            )
        else:
            json.dump({"ok": True, "manifests": manifests}, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
