#!/usr/bin/env bash
# carousel's DNS responder against dnsmasq, the same four-record zone from memory, with dnsperf
# (Debian's load generator) and carousel-loadgen dns-load. Prints answers/s and server CPU per
# 100k answers for each round, then the ratios of the medians (one run: ratios only mean
# anything within it).
#
#   bench/dns.sh                        release build, 3 rounds of 5 s, 64 queries in flight
#   ROUNDS=5 SECS=10 INFLIGHT=128 bench/dns.sh
#   CONTESTANTS="carousel-before=/tmp/carousel-old carousel=target/release/carousel" bench/dns.sh
#                                       compares builds too (each gets its own column)
#
# Every process listens on loopback only; every loop is bounded (ROUNDS rounds, SECS each).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
INFLIGHT=${INFLIGHT:-64}
CONTESTANTS=${CONTESTANTS:-carousel=target/release/carousel}
LG=bench/loadgen/target/release/carousel-loadgen
NAME=chat.bench.test
MEMBERS=127.0.0.21,127.0.0.22,127.0.0.23,127.0.0.24
command -v dnsperf >/dev/null || scripts/ensure-deps.sh dnsperf
command -v dnsmasq >/dev/null || scripts/ensure-deps.sh dnsmasq:dnsmasq-base
[ -x target/release/carousel ] || cargo build --release
[ -x "$LG" ] || (cd bench/loadgen && cargo build --release)

tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

cpu() { # pid: utime+stime in clock ticks
    awk '{print $14 + $15}' "/proc/$1/stat"
}
TICK=$(getconf CLK_TCK)

# The test bed's authoritative DNS for carousel's discovery, and backends for its checks.
"$LG" dns --listen 127.0.0.171:5300 --record "$NAME=$MEMBERS" --ttl 300 --time-limit 3600 >"$tmp/zone.log" 2>&1 &
pids+=($!)
"$LG" backend --addrs "$MEMBERS" --sink 19001 --source 19002 --echo 19003 --oneshot 19004 --hold 19005 \
    --time-limit 3600 >"$tmp/backend.log" 2>&1 &
pids+=($!)

declare -A ADDR PID
i=0
for c in $CONTESTANTS; do
    label=${c%%=*}
    bin=${c#*=}
    port=$((5400 + i))
    cat >"$tmp/$label.toml" <<EOF
[[listener]]
address = "127.0.0.1:$((18080 + i))"
protocols = ["http"]

[admin]
enabled = false

[dns]
nameservers = ["127.0.0.171:5300"]

[responder]
listen = ["127.0.0.172:$port"]
ttl_seconds = 2
max_answers = 8
rate_limit_per_second = 1000000   # so the rate limit does not cap the benchmark
allow_clients = ["127.0.0.0/8"]

[[cluster]]
name = "$NAME"
ports = [19003]
[cluster.health]
interval_ms = 60000
EOF
    "$bin" run -c "$tmp/$label.toml" >"$tmp/$label.log" 2>&1 &
    PID[$label]=$!
    pids+=($!)
    ADDR[$label]=127.0.0.172:$port
    i=$((i + 1))
done
dm=(dnsmasq --no-daemon --no-resolv --no-hosts --bind-interfaces --listen-address=127.0.0.173 --port=5353
    --cache-size=0 --local-ttl=2)
for ip in ${MEMBERS//,/ }; do dm+=(--host-record="$NAME,$ip"); done
"${dm[@]}" >"$tmp/dnsmasq.log" 2>&1 &
PID[dnsmasq]=$!
pids+=($!)
ADDR[dnsmasq]=127.0.0.173:5353
labels=()
for c in $CONTESTANTS; do labels+=("${c%%=*}"); done
labels+=(dnsmasq)

# Ready: four A records from each (carousel once its members are discovered and checked).
for l in "${labels[@]}"; do
    ok=0
    for _ in $(seq 1 100); do
        n=$(dig +short +tries=1 +time=1 -p "${ADDR[$l]#*:}" "@${ADDR[$l]%:*}" "$NAME" A 2>/dev/null | grep -c . || true)
        if [ "$n" = 4 ]; then ok=1; break; fi
        sleep 0.2
    done
    [ $ok = 1 ] || { echo "$l never answered 4 records: $(tail -5 "$tmp/$l.log" 2>/dev/null)" >&2; exit 1; }
done
echo "$NAME A" >"$tmp/queries"

run_one() { # tool label -> "answers/s cpu_s_per_100k"
    local tool=$1 l=$2 addr=${ADDR[$2]} c0 c1 qps n
    c0=$(cpu "${PID[$l]}")
    case $tool in
        dnsperf)
            dnsperf -s "${addr%:*}" -p "${addr#*:}" -d "$tmp/queries" -l "$SECS" -q "$INFLIGHT" -c 1 -t 1 \
                >"$tmp/out" 2>&1 || true
            qps=$(awk '/Queries per second/ {print $4}' "$tmp/out")
            n=$(awk '/Queries completed/ {print $3}' "$tmp/out")
            ;;
        loadgen)
            "$LG" dns-load --server "$addr" --name "$NAME" --label "$l" --concurrency "$INFLIGHT" \
                --seconds "$SECS" --warmup 0 >"$tmp/out" 2>&1 || true
            qps=$(grep -o '"answers_per_s":[0-9.]*' "$tmp/out" | cut -d: -f2)
            n=$(grep -o '"answers":[0-9]*' "$tmp/out" | head -1 | cut -d: -f2)
            ;;
    esac
    c1=$(cpu "${PID[$l]}")
    awk -v q="${qps:-0}" -v n="${n:-0}" -v d=$((c1 - c0)) -v t="$TICK" \
        'BEGIN { printf "%.0f %.3f\n", q, (n > 0 ? d / t / n * 100000 : 0) }'
}

declare -A RES
for tool in dnsperf loadgen; do
    for r in $(seq 1 "$ROUNDS"); do
        # Alternate who goes first, round by round.
        if [ $((r % 2)) = 1 ]; then order=("${labels[@]}"); else order=($(printf '%s\n' "${labels[@]}" | tac)); fi
        for l in "${order[@]}"; do
            RES[$tool,$l,$r]=$(run_one "$tool" "$l")
        done
    done
done

median() { sort -n | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
echo "# DNS responder vs dnsmasq: $ROUNDS rounds of $SECS s, $INFLIGHT queries in flight, load $(cut -d' ' -f1 /proc/loadavg) at the end"
for tool in dnsperf loadgen; do
    echo
    echo "| $tool | answers/s per round | answers/s (median) | CPU s per 100k answers per round | CPU (median) |"
    echo "|---|---|---:|---|---:|"
    for l in "${labels[@]}"; do
        per="" cpus=""
        for r in $(seq 1 "$ROUNDS"); do
            set -- ${RES[$tool,$l,$r]}
            per="$per${per:+ / }$1"; cpus="$cpus${cpus:+ / }$2"
        done
        q=$(for r in $(seq 1 "$ROUNDS"); do echo "${RES[$tool,$l,$r]}" | cut -d' ' -f1; done | median)
        c=$(for r in $(seq 1 "$ROUNDS"); do echo "${RES[$tool,$l,$r]}" | cut -d' ' -f2; done | median)
        eval "Q_${tool}_${l//-/_}=$q C_${tool}_${l//-/_}=$c"
        echo "| $l | $per | $q | $cpus | $c |"
    done
    echo
    for l in "${labels[@]}"; do
        [ "$l" = dnsmasq ] && continue
        eval "q=\$Q_${tool}_${l//-/_} c=\$C_${tool}_${l//-/_} dq=\$Q_${tool}_dnsmasq dc=\$C_${tool}_dnsmasq"
        awk -v l="$l" -v t="$tool" -v q="$q" -v c="$c" -v dq="$dq" -v dc="$dc" 'BEGIN {
            printf "%s: %s answers/s ÷ dnsmasq = **%.2f** (target ≥ 1.5), CPU per answer ÷ dnsmasq = **%.2f** (target ≤ 1.0)\n",
                t, l, (dq > 0 ? q / dq : 0), (dc > 0 ? c / dc : 0) }'
    done
done
