#!/usr/bin/env bash
# Runs the official OCI Distribution conformance suites against the release
# binary: the v1.1.1 suite (run.sh), the main-branch suite at OCI_VERSION=1.1,
# and the main-branch suite at OCI_VERSION=1.1+dev with the sparse data sets.
# Each run gets a fresh server on a free loopback port and an empty data
# directory, with the built-in defaults (only the listener and root_dir are
# set). Then the same three on the S3 backend (issue 16): a Garage server on
# loopback (scripts/s3-server.sh), each run under a key prefix of its own.
# Prints one result line per run and exits 1 when any test failed.
#
# usage: scripts/conformance.sh [RUNNERS_DIR]
#   RUNNERS_DIR (or OCI_CONFORMANCE_DIR) holds run.sh and run-main.sh, as in
#   ../shared/tools/oci-conformance. When neither is given or the directory has
#   no runners, the suites are skipped with a message and the exit status is 0.
set -euo pipefail
cd "$(dirname "$0")/.."

runners="${1:-${OCI_CONFORMANCE_DIR:-}}"
if [ -z "$runners" ] || [ ! -x "$runners/run.sh" ] || [ ! -x "$runners/run-main.sh" ]; then
    echo "conformance: skipped, no runners found (give a directory with run.sh and run-main.sh," \
        "e.g. scripts/conformance.sh ../shared/tools/oci-conformance)"
    exit 0
fi
runners="$(cd "$runners" && pwd)"

cargo build --release --quiet
binary="$PWD/target/release/angos"
work="$(mktemp -d -t angos-conformance.XXXXXX)"
server_pid=""
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [ -d "$work/garage" ]; then
        scripts/s3-server.sh stop "$work/garage" || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

backend=fs
# Starts a server in a fresh directory; sets server_pid and server_url.
start_server() {
    local dir="$work/$1"
    mkdir -p "$dir"
    if [ "$backend" = fs ]; then
        cat >"$dir/config.toml" <<EOF
[server]
bind_address = "127.0.0.1"
port = 0

[blob_store.fs]
root_dir = "$dir/data"
EOF
    else
        cat >"$dir/config.toml" <<EOF
[server]
bind_address = "127.0.0.1"
port = 0

[blob_store.s3]
endpoint = "$S3_ENDPOINT"
bucket = "$S3_BUCKET"
region = "$S3_REGION"
access_key_id = "$S3_ACCESS_KEY_ID"
secret_key = "$S3_SECRET_KEY"
key_prefix = "$1"
local_dir = "$dir/data"
EOF
    fi
    RUST_LOG=info "$binary" -c "$dir/config.toml" server >"$dir/server.log" 2>&1 &
    server_pid=$!
    local address=""
    for _ in $(seq 1 100); do
        address="$(sed -n 's/.*listening on \(127\.0\.0\.1:[0-9]*\).*/\1/p' "$dir/server.log" | head -n 1)"
        [ -n "$address" ] && break
        if ! kill -0 "$server_pid" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    if [ -z "$address" ]; then
        echo "conformance: the server did not start; its log:" >&2
        cat "$dir/server.log" >&2
        exit 2
    fi
    server_url="http://$address"
}

stop_server() {
    kill "$server_pid"
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
}

failed=0
# Runs one suite; $1 names the run, the rest is the command (the URL is appended).
run_suite() {
    local name="$1"
    shift
    start_server "$name"
    local output
    output="$("$@" "$server_url" 2>&1)" || true
    stop_server
    local result
    result="$(printf '%s\n' "$output" | tail -n 1)"
    printf '%s\n' "$output" | grep '^FAILED: ' || true
    if ! printf '%s\n' "$result" | grep -Eq '^[0-9]+ passed, 0 failed, [0-9]+ skipped$'; then
        failed=1
    fi
    printf '%-32s %s\n' "$name:" "$result"
}

run_suite "v1.1.1" "$runners/run.sh"
run_suite "main, OCI_VERSION=1.1" env OCI_VERSION=1.1 "$runners/run-main.sh"
run_suite "main, 1.1+dev, sparse" env OCI_VERSION=1.1+dev OCI_DATA_SPARSE=1 "$runners/run-main.sh"

backend=s3
scripts/s3-server.sh install
eval "$(scripts/s3-server.sh start "$work/garage")"
run_suite "s3-v1.1.1" "$runners/run.sh"
run_suite "s3-main-1.1" env OCI_VERSION=1.1 "$runners/run-main.sh"
run_suite "s3-main-1.1-dev-sparse" env OCI_VERSION=1.1+dev OCI_DATA_SPARSE=1 "$runners/run-main.sh"
exit "$failed"
