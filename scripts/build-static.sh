#!/usr/bin/env bash
# Builds the static x86_64-unknown-linux-musl binary and checks that it is
# static and serves from an empty root (no libc, no Rust): the appliance case.
# Prints the stripped size. Needs the musl target and Debian's musl-tools.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! rustup target list --installed 2>/dev/null | grep -q x86_64-unknown-linux-musl; then
    rustup target add x86_64-unknown-linux-musl
fi
if ! command -v musl-gcc >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y musl-tools; else sudo apt-get install -y musl-tools; fi
fi
# ring compiles C: point it at musl's compiler wrapper.
CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --target x86_64-unknown-linux-musl
binary=target/x86_64-unknown-linux-musl/release/angos

if ldd "$binary" 2>&1 | grep -q "=>"; then
    echo "build-static: $binary is dynamically linked" >&2
    exit 1
fi
echo "build-static: $(ldd "$binary" 2>&1 | head -1 | sed 's/^[[:space:]]*//')"
echo "build-static: stripped size $(stat -c %s "$binary") bytes"

# Serve from an empty root when we may chroot (root); otherwise just run it.
root=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$root"' EXIT
cp "$binary" "$root/angos"
mkdir -p "$root/data"
printf '[server]\nbind_address = "127.0.0.1"\nport = 0\n[blob_store.fs]\nroot_dir = "/data"\n' > "$root/config.toml"
if [ "$(id -u)" -eq 0 ]; then
    chroot "$root" /angos -c /config.toml server 2> "$root/log" &
else
    (cd "$root" && ./angos -c config.toml server 2> log) &
fi
pid=$!
for _ in $(seq 50); do
    port=$(grep -o 'listening on 127.0.0.1:[0-9]*' "$root/log" 2>/dev/null | cut -d: -f2 || true)
    [ -n "$port" ] && break
    sleep 0.1
done
[ -n "${port:-}" ] || { echo "build-static: the binary did not start" >&2; cat "$root/log" >&2; exit 1; }
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n' >&3
status=$(head -1 <&3)
case "$status" in
    "HTTP/1.1 200"*) echo "build-static: serves from an empty root: $status" ;;
    *) echo "build-static: unexpected answer: $status" >&2; exit 1 ;;
esac
