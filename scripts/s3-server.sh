#!/usr/bin/env bash
# A real S3-compatible server for the tests and benchmarks (issue 16): Garage, a
# single-node object store, built from crates.io and run on loopback.
#
#   scripts/s3-server.sh install     build garage into ~/.cargo/bin unless the pinned
#                                    version is already there (the first build takes
#                                    about 10 minutes on 2 cores and leaves a 53 MiB
#                                    binary; later runs reuse it)
#   scripts/s3-server.sh start DIR   start a server with its data and metadata under DIR
#                                    on free loopback ports, wait until it answers, make
#                                    a bucket and an access key allowed on it, and print
#                                    shell `export` lines:
#                                      eval "$(scripts/s3-server.sh start "$dir")"
#                                    Again after a stop: the same server restarts over
#                                    its data, on the same ports, with the same bucket
#                                    and key (only S3_PID changes).
#   scripts/s3-server.sh stop DIR    stop the server started under DIR (SIGTERM, then
#                                    SIGKILL after 10 s); its data stays
#
# The printed variables: S3_ENDPOINT (http://127.0.0.1:PORT, path-style addressing:
# no root domain is configured, so buckets are not virtual hosts), S3_REGION (the only
# region Garage accepts in a SigV4 scope), S3_BUCKET, S3_ACCESS_KEY_ID, S3_SECRET_KEY,
# S3_PID. S3_REGION and S3_BUCKET may be set before `start` to choose them.
# What it does and does not (scripts/s3_check.py checks it): objects, Range GETs,
# ListObjectsV2 with prefix, delimiter and continuation tokens, multipart uploads
# (create, upload part, list parts and uploads, complete, abort), presigned GETs,
# UNSIGNED-PAYLOAD bodies, conditional GETs; no checksum header is required. Garage
# 2.5.0 IGNORES `If-None-Match: *` and `If-Match` on PUT: a second create-once PUT
# returns 200 and overwrites the object.
# DIR/env holds the same lines, DIR/garage.log the server's log (RUST_LOG from
# S3_SERVER_LOG, default warnings only).
set -euo pipefail

GARAGE_VERSION=2.5.0
CARGO_ROOT="${CARGO_HOME:-$HOME/.cargo}"
GARAGE="$CARGO_ROOT/bin/garage"

die() {
    echo "s3-server.sh: $*" >&2
    exit 1
}

installed() {
    # Built from crates.io it says `garage cargo:2.5.0 [features: ...]`.
    [ -x "$GARAGE" ] && "$GARAGE" --version 2>/dev/null | grep -qF ":$GARAGE_VERSION "
}

install() {
    if installed; then
        return 0
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo is needed to build garage"
    echo "s3-server.sh: building garage $GARAGE_VERSION into $CARGO_ROOT/bin (once; takes minutes)" >&2
    # --locked: the dependency versions garage was released with; --force replaces
    # another version of garage already there.
    cargo install garage --version "=$GARAGE_VERSION" --locked --force --root "$CARGO_ROOT" >&2
    installed || die "garage $GARAGE_VERSION is not at $GARAGE after cargo install"
}

# N distinct free loopback ports (bound to port 0 and released: the kernel's pick).
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

random_hex() {
    od -An -tx1 -N"$1" /dev/urandom | tr -d ' \n'
}

running_pid() {
    local pid
    [ -f "$1/garage.pid" ] || return 1
    pid="$(cat "$1/garage.pid")"
    # Alive, and still garage (not a reused process id).
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q garage || return 1
    echo "$pid"
}

start() {
    local dir="$1"
    installed || die "garage $GARAGE_VERSION is not installed: run scripts/s3-server.sh install"
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    if running_pid "$dir" >/dev/null; then
        die "a server already runs under $dir (scripts/s3-server.sh stop $dir)"
    fi
    local conf="$dir/garage.toml"
    local cli=("$GARAGE" -c "$conf")
    local s3_port rpc_port admin_port pid=""
    local deadline=$((SECONDS + 60))
    fail() {
        [ -z "$pid" ] || kill "$pid" 2>/dev/null || true
        tail -n 30 "$dir/garage.log" >&2 || true
        die "$1"
    }
    # Runs the server and waits until its RPC answers.
    launch() {
        # Its own session, every stream on files: the caller's pipes close when this
        # script exits, not when the server does.
        RUST_LOG="${S3_SERVER_LOG:-garage=warn}" setsid "$GARAGE" -c "$conf" server \
            </dev/null >>"$dir/garage.log" 2>&1 &
        pid=$!
        echo "$pid" >"$dir/garage.pid"
        until "${cli[@]}" status >/dev/null 2>&1; do
            kill -0 "$pid" 2>/dev/null || fail "garage exited at start (log above)"
            [ "$SECONDS" -lt "$deadline" ] || fail "garage did not answer within 60 s"
            sleep 0.2
        done
    }
    # Healthy once the layout is in force (every partition has its node) and the S3
    # API answers (an anonymous request is refused with an S3 error).
    wait_healthy() {
        until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$admin_port/health")" = 200 ]; do
            kill -0 "$pid" 2>/dev/null || fail "garage exited during setup (log above)"
            [ "$SECONDS" -lt "$deadline" ] || fail "garage not healthy within 60 s"
            sleep 0.2
        done
        until curl -s -o /dev/null "http://127.0.0.1:$s3_port/"; do
            [ "$SECONDS" -lt "$deadline" ] || fail "the S3 API did not answer within 60 s"
            sleep 0.2
        done
    }

    if [ -f "$dir/env" ] && [ -f "$dir/ports" ] && [ -f "$conf" ]; then
        # A restart (a test that stops the server for a while): the same data, ports,
        # bucket and key, so a registry configured before keeps working.
        read -r s3_port rpc_port admin_port <"$dir/ports"
        launch
        wait_healthy
        sed -i "s/^export S3_PID=.*/export S3_PID=$pid/" "$dir/env"
        cat "$dir/env"
        return 0
    fi

    # Afresh: whatever a start that failed half-way left goes.
    rm -rf "$dir/meta" "$dir/data"
    mkdir -p "$dir/meta" "$dir/data"
    local region="${S3_REGION:-garage}" bucket="${S3_BUCKET:-angos}"
    read -r s3_port rpc_port admin_port <<<"$(free_ports 3)"
    echo "$s3_port $rpc_port $admin_port" >"$dir/ports"
    cat >"$conf" <<EOF
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "lmdb"
replication_factor = 1
# Stored as sent: the benchmarks measure the registry, not zstd.
compression_level = "none"

rpc_bind_addr = "127.0.0.1:$rpc_port"
rpc_public_addr = "127.0.0.1:$rpc_port"
rpc_secret = "$(random_hex 32)"

[s3_api]
s3_region = "$region"
api_bind_addr = "127.0.0.1:$s3_port"

[admin]
api_bind_addr = "127.0.0.1:$admin_port"
admin_token = "$(random_hex 16)"
EOF
    launch
    local node_id
    node_id="$("${cli[@]}" node id -q 2>/dev/null)"
    node_id="${node_id%%@*}"
    {
        "${cli[@]}" layout assign -z dc1 -c 1G "$node_id" &&
            "${cli[@]}" layout apply --version 1
    } >>"$dir/setup.log" 2>&1 || fail "could not apply the cluster layout ($dir/setup.log)"
    wait_healthy
    local key_id secret
    key_id="GK$(random_hex 12)"
    secret="$(random_hex 32)"
    {
        "${cli[@]}" bucket create "$bucket" &&
            "${cli[@]}" key import --yes -n "$bucket-key" "$key_id" "$secret" &&
            "${cli[@]}" bucket allow --read --write --owner --key "$key_id" "$bucket"
    } >>"$dir/setup.log" 2>&1 || fail "could not create the bucket and key ($dir/setup.log)"
    # Written last: a start that failed half-way is started afresh, not restarted.
    cat >"$dir/env" <<EOF
export S3_ENDPOINT=http://127.0.0.1:$s3_port
export S3_REGION=$region
export S3_BUCKET=$bucket
export S3_ACCESS_KEY_ID=$key_id
export S3_SECRET_KEY=$secret
export S3_PID=$pid
EOF
    cat "$dir/env"
}

stop() {
    local dir="$1" pid
    if ! pid="$(running_pid "$dir")"; then
        rm -f "$dir/garage.pid"
        return 0
    fi
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$dir/garage.pid"
}

case "${1:-}" in
install) install ;;
start)
    [ $# -eq 2 ] || die "usage: $0 start DIR"
    start "$2"
    ;;
stop)
    [ $# -eq 2 ] || die "usage: $0 stop DIR"
    stop "$2"
    ;;
*) die "usage: $0 install | start DIR | stop DIR" ;;
esac
