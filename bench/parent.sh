#!/usr/bin/env bash
# The cost of the parent hop (issue 23), in one run so the ratios mean something on a noisy
# machine: a client on carousel, which sends the destination via a Squid parent, against the
# same client configured with that Squid directly. CONNECT connection rate (fresh tunnel,
# 32-byte echo, backend closes) at concurrency 16, then throughput down/up. The destination
# name is known only to Squid (its hosts file): carousel hands it over unresolved.
#
#   bench/parent.sh               release build, 3 rounds
#   ROUNDS=5 bench/parent.sh
#
# Everything listens on loopback; every loop is bounded (ROUNDS rounds, each step time-limited).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
BYTES=${BYTES:-$((128 << 20))}
CAROUSEL=${CAROUSEL_BIN:-target/release/carousel}
LG=bench/loadgen/target/release/carousel-loadgen
command -v squid >/dev/null || scripts/ensure-deps.sh squid
[ -x "$CAROUSEL" ] || cargo build --release
[ -x "$LG" ] || (cd bench/loadgen && cargo build --release)

tmp=$(mktemp -d)
chmod 0777 "$tmp"      # squid drops to its own user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

B=127.0.0.31 PARENT=127.0.0.41
SINK=19301 SOURCE=19302 ECHO=19303 ONESHOT=19304 HOLD=19305
SQUID=19310 HTTP=19311
DEST=app.bench.test

"$LG" backend --addrs $B --sink $SINK --source $SOURCE --echo $ECHO --oneshot $ONESHOT --hold $HOLD \
    --time-limit 3600 >"$tmp/backend.log" 2>&1 &
pids+=($!)

echo "$B $DEST" >"$tmp/hosts"
cat >"$tmp/squid.conf" <<EOF
http_port $PARENT:$SQUID
acl localnet src 127.0.0.0/8
http_access allow localnet
http_access deny all
cache deny all
cache_mem 0 MB
hosts_file $tmp/hosts
dns_nameservers 127.0.0.1
access_log none
cache_store_log none
cache_log $tmp/cache.log
pid_filename $tmp/squid.pid
coredump_dir $tmp
pinger_enable off
netdb_filename none
shutdown_lifetime 0 seconds
visible_hostname parent.bench
max_filedescriptors 8192
EOF
squid -N -f "$tmp/squid.conf" >"$tmp/squid.out" 2>&1 &
pids+=($!)

cat >"$tmp/carousel.toml" <<EOF
[server]
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "$tmp/carousel.pid"
upgrade_sock = "$tmp/carousel.sock"

[[listener]]
address = "127.0.0.1:$HTTP"
protocols = ["http"]

[admin]
enabled = false

[access]
allow_clients = ["127.0.0.0/8"]

[[access.rule]]
name = "via the parent"
action = "allow"
destinations = [".bench.test"]
via = "parents.bench.test"

[[cluster]]
name = "parents.bench.test"
ports = [$SQUID]
static_members = ["$PARENT:$SQUID"]
[cluster.parent]
protocol = "http"

[limits]
max_connections = 4000
max_handshakes_per_client = 20000

[log]
access = "off"
EOF
"$CAROUSEL" check -c "$tmp/carousel.toml" >/dev/null
"$CAROUSEL" run -c "$tmp/carousel.toml" >"$tmp/carousel.out" 2>&1 &
CPID=$!
pids+=($!)

# Ready: one tunnel through each path.
for proxy in "$PARENT:$SQUID" "127.0.0.1:$HTTP"; do
    ok=0
    for _ in $(seq 1 50); do
        if "$LG" probe --mode connect --proxy "$proxy" --target "$DEST:$ECHO" --label ready --time-limit 2 >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [ $ok = 1 ] || { echo "no tunnel through $proxy:" >&2; tail -n 5 "$tmp"/carousel.out "$tmp"/cache.log >&2; exit 1; }
done

declare -A PROXY
PROXY[squid-direct]=$PARENT:$SQUID
PROXY[via-carousel]=127.0.0.1:$HTTP
res="$tmp/results.jsonl"
: >"$res"
for r in $(seq 1 "$ROUNDS"); do
    labels="squid-direct via-carousel"
    [ $((r % 2)) = 0 ] && labels="via-carousel squid-direct"
    for l in $labels; do
        "$LG" rate --mode connect --proxy "${PROXY[$l]}" --target "$DEST:$ONESHOT" --label "$l" \
            --count 2000 --concurrency 16 --time-limit 120 | jq -c --arg r "$r" '. + {round: $r}' >>"$res" || true
        "$LG" throughput --mode connect --proxy "${PROXY[$l]}" --target "$DEST:$SOURCE" --target-up "$DEST:$SINK" \
            --label "$l" --bytes "$BYTES" --repeat 1 --time-limit 120 | jq -c --arg r "$r" '. + {round: $r}' >>"$res" || true
    done
done

python3 - "$res" "$ROUNDS" <<'EOF'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def per(test, label, key):
    return [r[key] for r in rows if r.get('test') == test and r.get('label') == label and r.get(key)]
def med(xs): return st.median(xs) if xs else float('nan')
print(f"# the parent hop: {sys.argv[2]} rounds, medians (per round in brackets)\n")
print("| path | CONNECT conn/s C=16 | down MiB/s | up MiB/s | errors |")
print("|---|---:|---:|---:|---:|")
M = {}
for l in ["squid-direct", "via-carousel"]:
    c = per('rate', l, 'per_s'); d = per('throughput', l, 'down_median_mib_s'); u = per('throughput', l, 'up_median_mib_s')
    e = sum(r.get('errors', 0) for r in rows if r.get('label') == l)
    M[l] = (med(c), med(d), med(u))
    f = lambda xs: " / ".join(f"{x:.0f}" for x in xs)
    print(f"| {l} | {med(c):.0f} [{f(c)}] | {med(d):.0f} [{f(d)}] | {med(u):.0f} [{f(u)}] | {e} |")
s, v = M["squid-direct"], M["via-carousel"]
print("\n| through carousel ÷ client on the Squid parent directly | ratio |\n|---|---:|")
for i, what in enumerate(["CONNECT conn/s", "throughput down", "throughput up"]):
    print(f"| {what} | {v[i] / s[i]:.2f} |")
EOF
