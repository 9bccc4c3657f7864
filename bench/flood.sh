#!/usr/bin/env bash
# The issue-26 floods at their full size, against a release build of carousel, all on loopback:
#  1. UDP: 200,000 datagrams/s for 15 s at the DNS responder from 100 sources (50 inside its
#     allow_clients, 50 outside), a probe asking 20 times a second beside them: the responder's
#     RSS growth (target < 50 MiB, back within 10 s) and the probe's answered share (>= 99%).
#  2. TCP: 30,000 connects at the responder from two addresses (the latest 15,000 held), while a
#     SOCKS5 probe goes through the proxy every 100 ms and the health checks run every 200 ms:
#     probe failures and members marked down (target 0 and 0), carousel's peak descriptors.
# Usage: bench/flood.sh [--rate N] [--seconds S] [--connects N] [--old BIN]
#   --old BIN also runs both floods against another carousel binary (say, a build of an older
#   commit), for the before/after in one run.
# Results: one JSON line per flood and binary on stdout, logs in a scratch directory.
set -euo pipefail
cd "$(dirname "$0")/.."
RATE=200000 SECONDS_=15 CONNECTS=30000 OLD=""
while [ $# -gt 0 ]; do
    case "$1" in
        --rate) RATE=$2; shift 2 ;;
        --seconds) SECONDS_=$2; shift 2 ;;
        --connects) CONNECTS=$2; shift 2 ;;
        --old) OLD=$2; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
OUT=$(mktemp -d /tmp/carousel-flood.XXXXXX)
echo "flood: logs in $OUT" >&2
cargo build --release --quiet
(cd bench/loadgen && cargo build --release --quiet)
LG=bench/loadgen/target/release/carousel-loadgen
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
DNS_PORT=$(free_port) ONESHOT=$(free_port) SINK=$(free_port) SOURCE=$(free_port) ECHO=$(free_port) HOLD=$(free_port)
NAME=chat.flood.test
"$LG" dns --listen "127.0.0.1:$DNS_PORT" --record "$NAME=127.0.0.11,127.0.0.12,127.0.0.13" --time-limit 3600 \
    > "$OUT/dns.log" 2>&1 & pids+=($!)
"$LG" backend --addrs 127.0.0.11,127.0.0.12,127.0.0.13 --sink "$SINK" --source "$SOURCE" --echo "$ECHO" \
    --oneshot "$ONESHOT" --hold "$HOLD" --time-limit 3600 > "$OUT/backend.log" 2>&1 & pids+=($!)
for _ in $(seq 1 50); do
    grep -q dns_ready "$OUT/dns.log" 2>/dev/null && grep -q backend_ready "$OUT/backend.log" 2>/dev/null && break
    sleep 0.1
done

run_one() {
    local bin=$1 label=$2
    local http socks admin resp
    http=$(free_port) socks=$(free_port) admin=$(free_port) resp=$(free_port)
    cat > "$OUT/$label.toml" <<EOF
[server]
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "$OUT/$label.pid"
upgrade_sock = "$OUT/$label.sock"
[[listener]]
address = "127.0.0.1:$http"
protocols = ["http"]
[[listener]]
address = "127.0.0.1:$socks"
protocols = ["socks"]
[dns]
nameservers = ["127.0.0.1:$DNS_PORT"]
ip_strategy = "ipv4_only"
[access]
allow_clients = ["127.0.0.0/8"]
[[access.rule]]
action = "allow"
destinations = ["127.0.0.0/8", "$NAME"]
[log]
access = "off"
[admin]
address = "127.0.0.1:$admin"
[responder]
listen = ["127.0.0.1:$resp"]
allow_clients = ["127.0.0.0/24"]
[[cluster]]
name = "$NAME"
ports = [$ONESHOT]
[cluster.health]
interval_ms = 200
timeout_ms = 300
EOF
    "$bin" run -c "$OUT/$label.toml" > "$OUT/$label.log" 2>&1 &
    local pid=$!
    pids+=($pid)
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null 2>&1 && break
        sleep 0.1
    done
    "$LG" flood-udp --server "127.0.0.1:$resp" --name "$NAME" --rate "$RATE" --seconds "$SECONDS_" --pid "$pid" \
        | sed "s/^{/{\"label\":\"$label\",/"
    local fails_before
    fails_before=$(curl -s "http://127.0.0.1:$admin/metrics" | awk '/^carousel_health_checks_total.*result="fail"/ {s+=$2} END {print s+0}')
    "$LG" flood-tcp --responder "127.0.0.1:$resp" --count "$CONNECTS" --socks "127.0.0.1:$socks" \
        --probe-target "$NAME:$ONESHOT" --pid "$pid" 2>/dev/null | sed "s/^{/{\"label\":\"$label\",/" \
        || echo "{\"label\":\"$label\",\"test\":\"tcp-flood\",\"error\":\"the load generator failed\"}"
    local m fails_after down
    m=$(curl -s "http://127.0.0.1:$admin/metrics" || true)
    fails_after=$(echo "$m" | awk '/^carousel_health_checks_total.*result="fail"/ {s+=$2} END {print s+0}')
    down=$(echo "$m" | awk '/^carousel_member_up/ && $2 == 0 {n++} END {print n+0}')
    echo "{\"label\":\"$label\",\"test\":\"tcp-flood-checks\",\"failed_checks\":$((fails_after - fails_before)),\"members_down_at_end\":$down,\"alive\":$(kill -0 "$pid" 2>/dev/null && echo true || echo false)}"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

run_one target/release/carousel carousel
if [ -n "$OLD" ]; then run_one "$OLD" old; fi
