#!/usr/bin/env bash
# Installs what the end-to-end tests need when it is missing (skopeo, distribution's
# docker-registry, containerd, htpasswd, socat and curl from Debian's packages, the oras
# Python library and the webhook receivers' libraries from PyPI, the Adaptive Cards
# library from npm, the Garage S3 server from crates.io, Debian's Chromium with
# playwright-core and the Standard Webhooks library from npm for the operator page's
# browser tests), then runs the whole test suite and the browser tests.
# Safe to run again: nothing is installed twice. An install that fails stops here.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        echo "scripts/test.sh: need root or sudo to run: $*" >&2
        return 1
    fi
}

apt_updated=no
apt_install() {
    if [ "$apt_updated" = no ]; then
        as_root apt-get update
        apt_updated=yes
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y "$@"
}

# skopeo pushes and pulls images; openssl makes the test CA for HTTPS webhook
# receivers; promtool (Debian package prometheus) checks the /metrics format;
# docker (Debian's docker.io: dockerd and the client) and podman are the
# clients whose refused pushes must fail at once (tests/e2e/refusals.rs starts a
# dockerd of its own and skips, saying why, where none can run).
# The pull-through cache's upstreams and clients (tests/e2e/pull_through.rs):
# docker-registry is distribution's registry (binary `docker-registry`), with
# htpasswd users made by apache2-utils' `htpasswd -B` (bcrypt, the only hash it
# takes); containerd gives `containerd` and `ctr`, the client that mirrors with
# hosts.toml and `?ns=`; socat puts the tests' redirecting upstream behind TLS.
# curl: scripts/s3-server.sh waits on the S3 server's health endpoint with it.
missing=()
command -v skopeo >/dev/null 2>&1 || missing+=(skopeo)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v docker-registry >/dev/null 2>&1 || missing+=(docker-registry)
command -v htpasswd >/dev/null 2>&1 || missing+=(apache2-utils)
{ command -v containerd && command -v ctr; } >/dev/null 2>&1 || missing+=(containerd)
command -v socat >/dev/null 2>&1 || missing+=(socat)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# The operator page's browser tests (tests/ui): headless Chromium and its driver.
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
fi

if ! command -v python3 >/dev/null 2>&1; then
    apt_install python3 python3-pip
fi
pip_install() {
    if ! python3 -m pip --version >/dev/null 2>&1; then
        apt_install python3-pip
    fi
    # Debian's own python3 refuses system-wide pip installs (PEP 668) unless told.
    python3 -m pip install "$@" || python3 -m pip install --break-system-packages "$@"
}
if ! python3 -c 'import oras.client' >/dev/null 2>&1; then
    pip_install oras
fi

# The receivers of tests/e2e/webhook_formats.rs (the README's): Standard Webhooks,
# CloudEvents and Slack's SDK at the versions pinned there (pip checks first and
# downloads nothing when they are installed), and the Adaptive Cards library at the
# version tests/e2e/node/package-lock.json pins.
pip_install --quiet -r tests/e2e/python-requirements.txt
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    apt_install nodejs npm
fi
if ! npm ls --prefix tests/e2e/node >/dev/null 2>&1; then
    npm ci --prefix tests/e2e/node --no-audit --no-fund
fi
# playwright-core drives the Debian Chromium above (it downloads no browser).
if ! npm ls --prefix tests/ui >/dev/null 2>&1; then
    npm ci --prefix tests/ui --no-audit --no-fund
fi

# The S3-compatible server the S3 backend's tests run against (issue 16): Garage,
# built from crates.io into ~/.cargo/bin by its first run (minutes) and reused after
# (nothing is built when the pinned version is there). The tests start their own
# servers with `scripts/s3-server.sh start DIR`.
scripts/s3-server.sh install

# tests/e2e/slow_clients.rs holds 1,000 idle connections open on both ends.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt 4096 ]; then
    ulimit -n 4096 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
fi

# --no-fail-fast: one failing test binary must not hide the results of the others.
status=0
cargo test --all-targets --no-fail-fast || status=$?
# The operator page in a browser, on the binary the tests above built; its
# screenshots go to target/ui-screenshots (CI keeps that folder).
node --test tests/ui/ || status=$?
exit "$status"
