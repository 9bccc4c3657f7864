#!/usr/bin/env bash
# carousel as a relay against HAProxy 2.6 (mode tcp, splice) and a direct connection, in one run
# so the ratios mean something on a noisy machine:
#   - throughput down/up (256 MiB per transfer) through CONNECT, SOCKS5, HAProxy and direct;
#   - connection rate (fresh tunnel, 32-byte echo, backend closes) at concurrency 16 and 64;
#   - a storm: 2,000 tunnels opened at once, wall time against direct;
#   - the access log's cost: carousel with the log on (a file) against the same carousel with it
#     off, in alternating rounds: connection rate and the process's CPU per connection. (Cycles
#     interleaved between the two processes, `rate-paired`, swung ±17% between runs of one build
#     while its control, one process on both sides, stayed at 1.00: two processes on two cores
#     do not share the machine evenly, so that method is not used here.)
# Rounds alternate the contestants' order; medians of the rounds; ratios printed at the end.
#
#   bench/relay.sh                         release build, 3 rounds
#   ROUNDS=5 bench/relay.sh
#
# Everything listens on loopback; every loop is bounded (ROUNDS rounds, each step time-limited).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
STEPS=${STEPS:-throughput,rate,storm,log}   # any subset, comma-separated
want() { [[ ",$STEPS," == *",$1,"* ]]; }
BYTES=${BYTES:-$((256 << 20))}
CAROUSEL=${CAROUSEL_BIN:-target/release/carousel}
LG=bench/loadgen/target/release/carousel-loadgen
command -v haproxy >/dev/null || scripts/ensure-deps.sh haproxy
[ -x "$CAROUSEL" ] || cargo build --release
[ -x "$LG" ] || (cd bench/loadgen && cargo build --release)

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
[ -n "${KEEP:-}" ] && trap 'echo "kept $tmp"; for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT

B=127.0.0.31                              # the backend
SINK=19101 SOURCE=19102 ECHO=19103 ONESHOT=19104 HOLD=19105
HTTP=18181 SOCKS=18182                    # carousel, access log off
HTTP_LOG=18191                            # carousel, access log on
HA_SOURCE=18201 HA_SINK=18202 HA_ONESHOT=18203

"$LG" backend --addrs $B --sink $SINK --source $SOURCE --echo $ECHO --oneshot $ONESHOT --hold $HOLD \
    --time-limit 3600 >"$tmp/backend.log" 2>&1 &
pids+=($!)

carousel_conf() { # name http socks access-log
    cat <<EOF
[server]
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "$tmp/$1.pid"
upgrade_sock = "$tmp/$1.sock"

[[listener]]
address = "127.0.0.1:$2"
protocols = ["http"]
$( [ -n "$3" ] && printf '[[listener]]\naddress = "127.0.0.1:%s"\nprotocols = ["socks"]\n' "$3")
[admin]
enabled = false

[access]
allow_clients = ["127.0.0.0/8"]

# Loopback destinations are only reachable through a rule that names them.
[[access.rule]]
name = "bench backend"
action = "allow"
clients = ["127.0.0.0/8"]
destinations = ["127.0.0.0/8"]

[limits]
max_connections = 4000
max_handshakes_per_client = 20000

[log]
access = "$4"
EOF
}
carousel_conf carousel $HTTP $SOCKS off >"$tmp/carousel.toml"
carousel_conf carousel-log $HTTP_LOG "" "$tmp/access.log" >"$tmp/carousel-log.toml"
"$CAROUSEL" check -c "$tmp/carousel.toml" >/dev/null
"$CAROUSEL" check -c "$tmp/carousel-log.toml" >/dev/null
"$CAROUSEL" run -c "$tmp/carousel.toml" >"$tmp/carousel.out" 2>&1 &
CPID=$!
pids+=($!)
"$CAROUSEL" run -c "$tmp/carousel-log.toml" >"$tmp/carousel-log.out" 2>&1 &
LPID=$!
pids+=($!)

cat >"$tmp/haproxy.cfg" <<EOF
# HAProxy as a plain TCP relay (what people pick for raw speed): splice both ways, no logging,
# default threads (one per core).
global
    maxconn 6000
    tune.maxaccept -1

defaults
    mode tcp
    option splice-auto
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend source
    bind 127.0.0.1:$HA_SOURCE
    default_backend source
backend source
    server b $B:$SOURCE

frontend sink
    bind 127.0.0.1:$HA_SINK
    default_backend sink
backend sink
    server b $B:$SINK

frontend oneshot
    bind 127.0.0.1:$HA_ONESHOT
    default_backend oneshot
backend oneshot
    server b $B:$ONESHOT
EOF
haproxy -c -f "$tmp/haproxy.cfg" >/dev/null
haproxy -db -f "$tmp/haproxy.cfg" >"$tmp/haproxy.log" 2>&1 &
HPID=$!
pids+=($!)

# Ready: one tunnel through each path.
for path in "connect 127.0.0.1:$HTTP" "socks5 127.0.0.1:$SOCKS" "connect 127.0.0.1:$HTTP_LOG"; do
    set -- $path
    ok=0
    for _ in $(seq 1 50); do
        if "$LG" probe --mode "$1" --proxy "$2" --target "$B:$ECHO" --label ready --time-limit 2 >/dev/null 2>&1; then ok=1; break; fi
        sleep 0.2
    done
    [ $ok = 1 ] || { echo "no tunnel through $2:" >&2; tail -n 5 "$tmp"/carousel*.out >&2; exit 1; }
done

# Contestants: label, loadgen client arguments (mode, proxy, targets).
declare -A ARGS
ARGS[direct]="--mode direct"
ARGS[haproxy]="--mode direct"
ARGS[carousel-connect]="--mode connect --proxy 127.0.0.1:$HTTP"
ARGS[carousel-socks5]="--mode socks5 --proxy 127.0.0.1:$SOCKS"
declare -A DOWN UP ONE
DOWN[direct]=$B:$SOURCE; UP[direct]=$B:$SINK; ONE[direct]=$B:$ONESHOT
DOWN[haproxy]=127.0.0.1:$HA_SOURCE; UP[haproxy]=127.0.0.1:$HA_SINK; ONE[haproxy]=127.0.0.1:$HA_ONESHOT
for l in carousel-connect carousel-socks5; do DOWN[$l]=$B:$SOURCE; UP[$l]=$B:$SINK; ONE[$l]=$B:$ONESHOT; done
LABELS=(direct haproxy carousel-connect carousel-socks5)

res="$tmp/results.jsonl"
: >"$res"
order() { # round -> labels, reversed on even rounds
    if [ $(($1 % 2)) = 1 ]; then printf '%s\n' "${LABELS[@]}"; else printf '%s\n' "${LABELS[@]}" | tac; fi
}
for r in $(seq 1 "$ROUNDS"); do
    want throughput && for l in $(order "$r"); do
        "$LG" throughput ${ARGS[$l]} --target "${DOWN[$l]}" --target-up "${UP[$l]}" --label "$l" \
            --bytes "$BYTES" --repeat 1 --time-limit 120 | jq -c --arg r "$r" '. + {round: $r}' >>"$res" || true
    done
    want rate && for c in 16 64; do
        for l in $(order "$r"); do
            pid=""; [ "$l" = haproxy ] && pid="--pid $HPID"; [[ "$l" == carousel-* ]] && pid="--pid $CPID"
            "$LG" rate ${ARGS[$l]} --target "${ONE[$l]}" --label "$l" --count 4000 --concurrency $c $pid \
                --time-limit 120 | jq -c --arg r "$r" '. + {round: $r}' >>"$res" || true
        done
    done
    want storm && for l in $(order "$r"); do
        [ "$l" = haproxy ] && continue
        "$LG" rate ${ARGS[$l]} --target "${ONE[$l]}" --label "storm-$l" --count 2000 --concurrency 2000 \
            --time-limit 120 | jq -c --arg r "$r" '. + {round: $r}' >>"$res" || true
    done
    want log || continue
    # The same cycles against each instance in turn, with the process's CPU per connection
    # (the writer thread included): steadier than rates between two processes on two cores.
    for side in $( [ $((r % 2)) = 1 ] && echo "off on" || echo "on off"); do
        if [ $side = off ]; then port=$HTTP pid=$CPID; else port=$HTTP_LOG pid=$LPID; fi
        "$LG" rate --mode connect --proxy 127.0.0.1:$port --target "$B:$ONESHOT" --label "cpu-log-$side" \
            --count 8000 --concurrency 16 --pid $pid --time-limit 120 | jq -c --arg r "$r" '. + {round: $r}' >>"$res" || true
    done
done
logged=$(wc -l <"$tmp/access.log" 2>/dev/null || echo 0)

python3 - "$res" "$ROUNDS" "$logged" <<'EOF'
import json, sys, statistics as st
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
rounds, logged = int(sys.argv[2]), int(sys.argv[3])
def med(xs): return st.median(xs) if xs else float('nan')
def per(test, label, key, **kw):
    return [r[key] for r in rows if r.get('test') == test and r.get('label') == label
            and all(r.get(k) == v for k, v in kw.items()) and r.get(key) is not None]
print(f"# carousel as a relay: {rounds} rounds; medians (per-round values in brackets)\n")
print("| path | down MiB/s | up MiB/s | conn/s C=16 | conn/s C=64 | relay CPU µs/conn C=16 / C=64 | storm of 2,000: wall s | errors |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
M = {}
for l in ["direct", "haproxy", "carousel-connect", "carousel-socks5"]:
    down = [x for x in per('throughput', l, 'down_median_mib_s') if x]
    up = [x for x in per('throughput', l, 'up_median_mib_s') if x]
    c16 = per('rate', l, 'per_s', concurrency=16)
    c64 = per('rate', l, 'per_s', concurrency=64)
    storm = per('rate', 'storm-' + l, 'elapsed_s')
    errs = sum(r.get('errors', 0) for r in rows if r.get('label') in (l, 'storm-' + l))
    M[l] = dict(down=med(down), up=med(up), c16=med(c16), c64=med(c64), storm=med(storm))
    f = lambda xs, d=0: " / ".join(f"{x:.{d}f}" for x in xs)
    storm_s = f"{med(storm):.3f} [{f(storm, 3)}]" if storm else "–"
    cpu16 = per('rate', l, 'proxy_cpu_us_per_conn', concurrency=16)
    cpu64 = per('rate', l, 'proxy_cpu_us_per_conn', concurrency=64)
    cpu_s = f"{med(cpu16):.0f} / {med(cpu64):.0f}" if cpu16 else "–"
    print(f"| {l} | {med(down):.0f} [{f(down)}] | {med(up):.0f} [{f(up)}] | {med(c16):.0f} [{f(c16)}] | {med(c64):.0f} [{f(c64)}] | {cpu_s} | {storm_s} | {errs} |")
print()
def div(a, b):
    return a / b if b and a == a and b == b else float('nan')
def line(what, x, target, higher=True):
    if x != x:
        return  # not measured in this run (STEPS)
    ok = x >= target if higher else x <= target
    print(f"| {what} | {x:.2f} | {'≥' if higher else '≤'} {target} | {'met' if ok else '**not met**'} |")
print("| target | measured ratio | target | met |")
print("|---|---:|---|---|")
for l in ["carousel-connect", "carousel-socks5"]:
    m, h, d = M[l], M["haproxy"], M["direct"]
    line(f"{l} throughput down ÷ HAProxy", div(m['down'], h['down']), 1.0)
    line(f"{l} throughput up ÷ HAProxy", div(m['up'], h['up']), 1.0)
    line(f"{l} conn/s C=16 ÷ HAProxy", div(m['c16'], h['c16']), 0.9)
    line(f"{l} conn/s C=64 ÷ HAProxy", div(m['c64'], h['c64']), 0.9)
    line(f"{l} storm wall time ÷ direct", div(m['storm'], d['storm']), 1.25, higher=False)
cpu_off = med(per('rate', 'cpu-log-off', 'proxy_cpu_us_per_conn'))
cpu_on = med(per('rate', 'cpu-log-on', 'proxy_cpu_us_per_conn'))
rate_off = med(per('rate', 'cpu-log-off', 'per_s'))
rate_on = med(per('rate', 'cpu-log-on', 'per_s'))
if cpu_off == cpu_off:
    extra = div(cpu_on, cpu_off) - 1
    print(f"| access log on: carousel CPU µs/conn on ÷ off ({cpu_on:.1f} vs {cpu_off:.1f}; conn/s {rate_on:.0f} vs {rate_off:.0f}, C=16) | {div(cpu_on, cpu_off):.3f} (cost {extra * 100:.1f}%) | cost ≤ 5% | {'met' if extra <= 0.05 else '**not met**'} |")
lerr = sum(r.get('errors', 0) for r in rows if str(r.get('label', '')).startswith('cpu-log-'))
if rate_off == rate_off:
    cost = 1 - div(rate_on, rate_off)
    print(f"| access log on: conn/s on ÷ off, C=16, alternating rounds ({logged} lines written, {lerr} errors) | {div(rate_on, rate_off):.3f} (cost {cost * 100:.1f}%) | cost ≤ 5% | {'met' if cost <= 0.05 else '**not met**'} |")
EOF
