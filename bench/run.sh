#!/usr/bin/env bash
# carousel benchmark: carousel against Squid, Dante, tinyproxy and microsocks and a direct
# connection, on this machine, over loopback only.
#
#   bench/run.sh            full run (a few minutes after the builds); writes docs/BENCHMARKS.md
#   bench/run.sh --quick    short smoke run; writes bench/out/<run>/BENCHMARKS.md only
#   bench/run.sh --doc FILE write the report to FILE instead
#   bench/run.sh --peers squid,dante   only these peers (of squid,dante,tinyproxy,microsocks;
#                           "none" for carousel and direct only)
#   CAROUSEL_BIN=path bench/run.sh   measure that carousel binary instead of building one
#   LOADGEN_BIN=path bench/run.sh    use that load generator binary instead of building one
#   bench/run.sh --steps throughput,rate   only these steps (of throughput,rate,latency,idle,
#                           attacks,dns,proxyproto; the default is the first four). attacks: load
#                           scenarios against carousel alone (slowloris-get, big-head, name-flood).
#                           dns: carousel's DNS responder against dnsmasq, UDP answers/s.
#                           proxyproto: connection rate HAProxy -> carousel with PROXY v2 against
#                           HAProxy -> carousel without it.
#   CAROUSEL_THREADS=n, CAROUSEL_SERVER_EXTRA='key = value', CAROUSEL_TUNNEL_EXTRA='key = value'
#                           carousel [server] / [tunnel] settings to try
#
# Needs root (apt-get, DNS on port 53, a private mount namespace per libc-resolver peer).
# Installs the missing peers with apt-get, builds carousel (cargo build --release) and the load
# generator (bench/loadgen), starts a test DNS server on 127.0.0.153:53 and backends on
# 127.0.0.21-24, then measures every proxy one at a time. Every process it starts is stopped on
# exit (trap EXIT). Nothing but loopback addresses is ever a target.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK=0
DOC=""
ONLY_PEERS="squid,dante,tinyproxy,microsocks"
STEPS="throughput,rate,latency,idle"
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --doc) DOC="${2:?--doc needs a file}"; shift ;;
        --peers) ONLY_PEERS="${2:?--peers needs a list}"; shift ;;
        --steps) STEPS="${2:?--steps needs a list}"; shift ;;
        -h|--help) sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done

want_step() { # step: whether --steps asked for it
    case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac
}

# ---------------------------------------------------------------------------------------------
# Parameters. Ports are fixed (outside the ephemeral range) so configs and docs are stable.
DNS_IP=127.0.0.153                 # Squid's dns_nameservers takes no port: DNS must be on :53
BACKEND_IPS=(127.0.0.21 127.0.0.22 127.0.0.23 127.0.0.24)
NAME=backend.bench.test            # A records: every backend IP
SINK_PORT=18001; SOURCE_PORT=18002; ECHO_PORT=18003; ONESHOT_PORT=18004; HOLD_PORT=18005
CAROUSEL_HTTP=17001; CAROUSEL_SOCKS=17002; CAROUSEL_ADMIN=17009   # admin: load scenarios only
SQUID_PORT=17003; TINYPROXY_PORT=17004; DANTE_PORT=17005; MICROSOCKS_PORT=17006

if [ "$QUICK" = 1 ]; then
    THR_BYTES=$((32 << 20)); THR_REPEAT=1
    RATE_COUNT=300; LAT_C=8; LAT_COUNT=25; IDLE_WANT=500
else
    THR_BYTES=$((256 << 20)); THR_REPEAT=5
    RATE_COUNT=20000; LAT_C=32; LAT_COUNT=400; IDLE_WANT=10000
fi
STEP_LIMIT=300                     # seconds any one measurement may take

# Load scenarios (step attacks): attack sizes, the addresses the attack comes from, and the
# wildcard zone of the name flood (short TTL: a cached name is due for refresh within seconds).
if [ "$QUICK" = 1 ]; then
    SLOW_COUNT=100; BIG_COUNT=100; BIG_REPEAT=5; FLOOD_NAMES=2000; FLOOD_IDLE=10
else
    SLOW_COUNT=500; BIG_COUNT=500; BIG_REPEAT=10; FLOOD_NAMES=20000; FLOOD_IDLE=30
fi
ATTACK_SOURCES=127.0.0.31,127.0.0.32,127.0.0.33,127.0.0.34
WILD=wild.bench.test; WILD_TTL=5

# Step dns: carousel's responder (a cluster of the four backends) against dnsmasq answering the
# same four A records from memory, on their own loopback addresses; rounds alternate the two.
CLUSTER_NAME=chat.bench.test
RESP_ADDR=127.0.0.155:5353; DNSMASQ_IP=127.0.0.156; DNSMASQ_PORT=5353
# Step proxyproto: one carousel with a PROXY-v2 listener and a plain one, HAProxy (mode tcp) with
# a frontend in front of each.
CAROUSEL_PP=17011; CAROUSEL_PLAIN=17012; HAPROXY_PP=17021; HAPROXY_PLAIN=17022
ROUNDS=3
if [ "$QUICK" = 1 ]; then
    DNS_SECONDS=1; DNS_C=64; PP_COUNT=300; PP_COUNT_C=300; PP_WARM=100; PP_C=16; PP_PAIRED=300
else
    # Cycles per run: sequential, and $PP_C at a time; unrecorded warm-up cycles per path and
    # round; cycles of a paired run (both paths interleaved, half each).
    DNS_SECONDS=5; DNS_C=64; PP_COUNT=5000; PP_COUNT_C=10000; PP_WARM=1000; PP_C=16; PP_PAIRED=8000
fi

STAMP="$(date -u +%Y%m%dT%H%M%SZ)"
if [ "$QUICK" = 1 ]; then RUN_FLAG=" --quick"; RUN_SUFFIX="-quick"; else RUN_FLAG=""; RUN_SUFFIX=""; fi
# The report quotes the exact invocation, including the variant settings.
[ "$ONLY_PEERS" = "squid,dante,tinyproxy,microsocks" ] || RUN_FLAG="$RUN_FLAG --peers $ONLY_PEERS"
[ "$STEPS" = "throughput,rate,latency,idle" ] || RUN_FLAG="$RUN_FLAG --steps $STEPS"
RUN_ENV=""
for v in CAROUSEL_THREADS CAROUSEL_SERVER_EXTRA CAROUSEL_TUNNEL_EXTRA; do
    [ -z "${!v:-}" ] || RUN_ENV="$RUN_ENV$v='${!v}' "
done
OUT="$ROOT/bench/out/$STAMP$RUN_SUFFIX"
RES="$OUT/results.jsonl"
CMDS="$OUT/commands.txt"
if [ -z "$DOC" ]; then
    # Only a full run of every step replaces the committed report.
    if [ "$QUICK" = 1 ] || [ "$STEPS" != "throughput,rate,latency,idle" ]; then
        DOC="$OUT/BENCHMARKS.md"
    else
        DOC="$ROOT/docs/BENCHMARKS.md"
    fi
fi
mkdir -p "$OUT"
: > "$RES"; : > "$CMDS"
START_EPOCH=$(date +%s)

log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, DNS on port 53, mount namespaces)"

# ---------------------------------------------------------------------------------------------
# Process bookkeeping: every background process is started with setsid (its own process group)
# and stopped by its id; the EXIT trap stops whatever is still running.
PIDS=()
POLICY_RC_CREATED=0

stop_pid() { # pid [signal]
    local pid=$1 sig=${2:-TERM} i
    [ -n "$pid" ] || return 0
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do           # up to 10 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid ignored SIG$sig; killing"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    fi
    # Children of a multi-process proxy share its process group: make sure none is left.
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for ((i=${#PIDS[@]}-1; i>=0; i--)); do
        p=${PIDS[$i]}
        stop_pid "$p" TERM
    done
    if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
    [ "$rc" = 0 ] || log "exited with status $rc; logs in $OUT"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

start_bg() { # logfile cmd... ; sets STARTED_PID
    local logf=$1; shift
    setsid "$@" > "$logf" 2>&1 < /dev/null &
    STARTED_PID=$!
    PIDS+=("$STARTED_PID")
}

forget_pid() { # drop a stopped pid from PIDS
    local p=$1 keep=() q
    for q in "${PIDS[@]}"; do [ "$q" = "$p" ] || keep+=("$q"); done
    PIDS=("${keep[@]}")
}

# ---------------------------------------------------------------------------------------------
# 1. Peers: install what is missing (apt-get), skip what Debian does not have.
declare -A PKG_OF=([squid]=squid [dante]=dante-server [tinyproxy]=tinyproxy [microsocks]=microsocks)
declare -A BIN_OF=([squid]=squid [dante]=danted [tinyproxy]=tinyproxy [microsocks]=microsocks)
PEERS=()
SKIPPED=()
need=()
WANTED=()
for peer in squid dante tinyproxy microsocks; do
    case ",$ONLY_PEERS," in *",$peer,"*) WANTED+=("$peer") ;; esac
done
for peer in "${WANTED[@]}"; do
    command -v "${BIN_OF[$peer]}" >/dev/null 2>&1 || need+=("${PKG_OF[$peer]}")
done
# The steps dns and proxyproto need dnsmasq (the binary only: dnsmasq-base has no service) and
# HAProxy.
DNSMASQ=$(command -v dnsmasq || echo /usr/sbin/dnsmasq)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
if want_step dns && [ ! -x "$DNSMASQ" ]; then need+=(dnsmasq-base); fi
if want_step proxyproto && [ ! -x "$HAPROXY" ]; then need+=(haproxy); fi
if [ ${#need[@]} -gt 0 ]; then
    log "installing with apt-get: ${need[*]}"
    apt-get update -qq >"$OUT/apt.log" 2>&1 || log "apt-get update failed (see $OUT/apt.log)"
    inst=()
    for pkg in "${need[@]}"; do
        cand=$(apt-cache policy "$pkg" 2>/dev/null | awk '/Candidate:/ {print $2}')
        if [ -z "$cand" ] || [ "$cand" = "(none)" ]; then
            log "package $pkg is not available from apt here: skipping that peer"
        else
            inst+=("$pkg")
        fi
    done
    if [ ${#inst[@]} -gt 0 ]; then
        # Keep the packages' own services from starting (we run our own instances).
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
            chmod +x /usr/sbin/policy-rc.d
            POLICY_RC_CREATED=1
        fi
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${inst[@]}" >>"$OUT/apt.log" 2>&1 \
            || log "apt-get install failed (see $OUT/apt.log)"
        if [ "$POLICY_RC_CREATED" = 1 ]; then rm -f /usr/sbin/policy-rc.d; POLICY_RC_CREATED=0; fi
    fi
fi
if want_step dns && [ ! -x "$DNSMASQ" ]; then die "step dns needs dnsmasq (package dnsmasq-base)"; fi
if want_step proxyproto && [ ! -x "$HAPROXY" ]; then die "step proxyproto needs haproxy"; fi
for peer in "${WANTED[@]}"; do
    if command -v "${BIN_OF[$peer]}" >/dev/null 2>&1; then
        PEERS+=("$peer")
    else
        SKIPPED+=("$peer (package ${PKG_OF[$peer]} not installable)")
    fi
done
NS_OK=1
if ! unshare -m --propagation private true 2>/dev/null; then
    NS_OK=0
    log "no private mount namespaces here: Dante, tinyproxy and microsocks cannot be pointed at the test DNS server; skipping them"
fi
log "peers: ${PEERS[*]:-none}"

# ---------------------------------------------------------------------------------------------
# 2. Builds.
if [ -n "${CAROUSEL_BIN:-}" ]; then
    # For measuring a binary built elsewhere (e.g. another revision); normally unset.
    CAROUSEL="$CAROUSEL_BIN"
    [ -x "$CAROUSEL" ] || die "CAROUSEL_BIN=$CAROUSEL is not executable"
    log "using carousel binary $CAROUSEL (CAROUSEL_BIN)"
else
    log "building carousel (cargo build --release)"
    (cd "$ROOT" && cargo build --release --bin carousel) >"$OUT/build-carousel.log" 2>&1 \
        || { tail -30 "$OUT/build-carousel.log" >&2; die "carousel build failed"; }
    CAROUSEL="$ROOT/target/release/carousel"
fi
if [ -n "${LOADGEN_BIN:-}" ]; then
    LG="$LOADGEN_BIN"
    [ -x "$LG" ] || die "LOADGEN_BIN=$LG is not executable"
    log "using load generator binary $LG (LOADGEN_BIN)"
else
    log "building the load generator (bench/loadgen)"
    (cd "$ROOT/bench/loadgen" && CARGO_TARGET_DIR="$ROOT/target/loadgen" cargo build --release --locked) \
        >"$OUT/build-loadgen.log" 2>&1 || { tail -30 "$OUT/build-loadgen.log" >&2; die "loadgen build failed"; }
    LG="$ROOT/target/loadgen/release/carousel-loadgen"
fi

# ---------------------------------------------------------------------------------------------
# 3. Limits: tunnels need two descriptors in the proxy; raise the soft limit as far as allowed.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
NOFILE=$(ulimit -n)
IDLE_COUNT=$(( (NOFILE - 1000) / 2 ))
IDLE_COUNT=$(( IDLE_COUNT / 500 * 500 ))
[ "$IDLE_COUNT" -gt "$IDLE_WANT" ] && IDLE_COUNT=$IDLE_WANT
[ "$IDLE_COUNT" -ge 100 ] || die "open-file limit $NOFILE is too low for the idle test"
if [ "$IDLE_COUNT" -lt "$IDLE_WANT" ]; then
    log "open-file limit is $NOFILE (hard $(ulimit -Hn)): idle test scaled to $IDLE_COUNT tunnels"
fi

# Ports must be free.
busy=""
for p in $SINK_PORT $SOURCE_PORT $ECHO_PORT $ONESHOT_PORT $HOLD_PORT $CAROUSEL_HTTP $CAROUSEL_SOCKS $CAROUSEL_ADMIN $SQUID_PORT \
         $TINYPROXY_PORT $DANTE_PORT $MICROSOCKS_PORT $CAROUSEL_PP $CAROUSEL_PLAIN $HAPROXY_PP $HAPROXY_PLAIN; do
    if ss -Hltn "sport = :$p" 2>/dev/null | grep -q .; then busy="$busy $p"; fi
done
if want_step dns; then
    for a in "$RESP_ADDR" "$DNSMASQ_IP:$DNSMASQ_PORT"; do
        if ss -Hlun "src $a" 2>/dev/null | grep -q .; then busy="$busy $a"; fi
    done
fi
if ss -Hlun "src $DNS_IP:53" 2>/dev/null | grep -q . || ss -Hltn "src $DNS_IP:53" 2>/dev/null | grep -q .; then
    busy="$busy $DNS_IP:53"
fi
[ -z "$busy" ] || die "ports in use:$busy (another bench running?)"

# ---------------------------------------------------------------------------------------------
# 4. Test DNS server and backends.
backend_csv=$(IFS=,; echo "${BACKEND_IPS[*]}")
# The wildcard zone and the query counts (stats file) serve the name-flood scenario.
DNS_ARGS=(--listen "$DNS_IP:53" --record "$NAME=$backend_csv" --record "*.$WILD=${BACKEND_IPS[0]}@$WILD_TTL"
          --ttl 300 --stats-file "$OUT/dns-stats.json" --time-limit 7200)
# Step dns: carousel discovers its cluster's members from this record.
if want_step dns; then DNS_ARGS+=(--record "$CLUSTER_NAME=$backend_csv"); fi
start_bg "$OUT/dns.log" "$LG" --threads 1 dns "${DNS_ARGS[@]}"
DNS_PID=$STARTED_PID
start_bg "$OUT/backend.log" "$LG" --threads 1 backend --addrs "$backend_csv" --sink $SINK_PORT \
    --source $SOURCE_PORT --echo $ECHO_PORT --oneshot $ONESHOT_PORT --hold $HOLD_PORT --time-limit 7200
BACKEND_PID=$STARTED_PID
for i in $(seq 1 50); do
    grep -q dns_ready "$OUT/dns.log" 2>/dev/null && grep -q backend_ready "$OUT/backend.log" 2>/dev/null && break
    kill -0 "$DNS_PID" 2>/dev/null || die "DNS server did not start: $(cat "$OUT/dns.log")"
    kill -0 "$BACKEND_PID" 2>/dev/null || die "backends did not start: $(cat "$OUT/backend.log")"
    sleep 0.1
done
grep -q dns_ready "$OUT/dns.log" && grep -q backend_ready "$OUT/backend.log" \
    || die "DNS server or backends not ready after 5 s (see $OUT/dns.log, $OUT/backend.log)"
printf 'nameserver %s\noptions timeout:1 attempts:2\n' "$DNS_IP" > "$OUT/resolv.conf"

# ---------------------------------------------------------------------------------------------
# 5. Peer configurations (each with its recommended speed settings) and start functions.
# Each start_* function sets PROXY_PID.
CONF="$OUT/conf"; mkdir -p "$CONF"

cat > "$CONF/carousel.toml" <<EOF
# carousel: two listeners (HTTP/CONNECT and SOCKS), the test DNS server, IPv4 only (the bench
# zone has no AAAA records), loopback clients.
[server]
threads = ${CAROUSEL_THREADS:-$(nproc)}
${CAROUSEL_SERVER_EXTRA:-}
grace_period_seconds = 0
graceful_shutdown_timeout_seconds = 1
pid_file = "$OUT/carousel.pid"
upgrade_sock = "$OUT/carousel_upgrade.sock"

[[listener]]
address = "127.0.0.1:$CAROUSEL_HTTP"
protocols = ["http"]

[[listener]]
address = "127.0.0.1:$CAROUSEL_SOCKS"
protocols = ["socks"]

[dns]
nameservers = ["$DNS_IP:53"]
ip_strategy = "ipv4_only"

[tunnel]
idle_timeout_seconds = 600
${CAROUSEL_TUNNEL_EXTRA:-}

[access]
allow_clients = ["127.0.0.0/8"]
EOF
"$CAROUSEL" check -c "$CONF/carousel.toml" >"$OUT/carousel-check.log" 2>&1 \
    || die "carousel check failed: $(cat "$OUT/carousel-check.log")"
# Sections that newer carousel versions have: each is kept only if this binary accepts it, so
# the harness keeps working while the config format grows (`carousel check` decides).
carousel_optional() { # description; snippet on stdin
    local cand="$CONF/carousel.toml.candidate"
    cp "$CONF/carousel.toml" "$cand"
    { echo; cat; } >> "$cand"
    if "$CAROUSEL" check -c "$cand" >"$OUT/carousel-check.log" 2>&1; then
        mv "$cand" "$CONF/carousel.toml"
    else
        log "carousel config: leaving out $1 ($(head -1 "$OUT/carousel-check.log"))"
        rm -f "$cand"
    fi
}
carousel_optional "the loopback access rule" <<EOF
# Loopback destinations are only reachable through a rule that names them.
[[access.rule]]
name = "bench backends"
action = "allow"
clients = ["127.0.0.0/8"]
destinations = ["127.0.0.0/8"]
ports = [$SINK_PORT, $SOURCE_PORT, $ECHO_PORT, $ONESHOT_PORT, $HOLD_PORT]
EOF
carousel_optional "connection limits" <<EOF
[limits]
# The idle test opens every tunnel from 127.0.0.1.
max_connections = $NOFILE
max_connections_per_client = $NOFILE
EOF
carousel_optional "access logging off" <<EOF
[log]
# Like the peers (Squid access_log none, tinyproxy LogLevel Error, Dante without connect
# logging): no line per tunnel.
access = "off"
EOF
carousel_optional "the admin listener switch" <<EOF
[admin]
# Not needed here, and its default port may be taken.
enabled = false
EOF

# The load scenarios read carousel's /metrics: the same configuration with the admin listener on.
HANDSHAKE_MS=$(sed -n 's/^[[:space:]]*handshake_timeout_ms[[:space:]]*=[[:space:]]*\([0-9][0-9]*\).*/\1/p' \
    "$CONF/carousel.toml" | tail -1)
HANDSHAKE_MS=${HANDSHAKE_MS:-10000}   # carousel's default
if want_step attacks; then
    awk '/^\[/ { skip = ($0 == "[admin]") } !skip' "$CONF/carousel.toml" > "$CONF/carousel-attacks.toml"
    cat >> "$CONF/carousel-attacks.toml" <<EOF
[admin]
# /metrics is scraped before and after each load scenario.
enabled = true
address = "127.0.0.1:$CAROUSEL_ADMIN"
EOF
    "$CAROUSEL" check -c "$CONF/carousel-attacks.toml" >"$OUT/carousel-check.log" 2>&1 \
        || die "carousel check (load scenarios) failed: $(cat "$OUT/carousel-check.log")"
fi

# Step dns: the same configuration plus the responder and one cluster of the four backends
# (members from the test DNS server; one health check a minute, so checks cost nothing).
if want_step dns; then
    cp "$CONF/carousel.toml" "$CONF/carousel-dns.toml"
    cat >> "$CONF/carousel-dns.toml" <<EOF

[responder]
listen = ["$RESP_ADDR"]
ttl_seconds = 2
max_answers = 8
rate_limit_per_second = 1000000   # so the rate limit does not cap the benchmark
allow_clients = ["127.0.0.0/8"]

[[cluster]]
name = "$CLUSTER_NAME"
ports = [$ECHO_PORT]
[cluster.health]
interval_ms = 60000
EOF
    "$CAROUSEL" check -c "$CONF/carousel-dns.toml" >"$OUT/carousel-check.log" 2>&1 \
        || die "carousel check (dns) failed: $(cat "$OUT/carousel-check.log")"
fi

# Step proxyproto: the same configuration plus two HTTP listeners, one expecting a PROXY v2
# header from HAProxy on 127.0.0.1, one plain; HAProxy (mode tcp) with a frontend for each.
if want_step proxyproto; then
    cp "$CONF/carousel.toml" "$CONF/carousel-pp.toml"
    cat >> "$CONF/carousel-pp.toml" <<EOF

[[listener]]
address = "127.0.0.1:$CAROUSEL_PP"
protocols = ["http"]
proxy_protocol = "v2"
trusted_proxies = ["127.0.0.1/32"]

[[listener]]
address = "127.0.0.1:$CAROUSEL_PLAIN"
protocols = ["http"]
EOF
    "$CAROUSEL" check -c "$CONF/carousel-pp.toml" >"$OUT/carousel-check.log" 2>&1 \
        || die "carousel check (proxyproto) failed: $(cat "$OUT/carousel-check.log")"
    cat > "$CONF/haproxy.cfg" <<EOF
# HAProxy as a TCP balancer in front of carousel: one frontend sends a PROXY v2 header, one does
# not. No logging; default threads (one per core).
global
    maxconn 4096
    pidfile $OUT/haproxy.pid

defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s

frontend pp2
    bind 127.0.0.1:$HAPROXY_PP
    default_backend carousel_pp2

backend carousel_pp2
    server carousel 127.0.0.1:$CAROUSEL_PP send-proxy-v2

frontend plain
    bind 127.0.0.1:$HAPROXY_PLAIN
    default_backend carousel_plain

backend carousel_plain
    server carousel 127.0.0.1:$CAROUSEL_PLAIN
EOF
    "$HAPROXY" -c -f "$CONF/haproxy.cfg" >"$OUT/haproxy-check.log" 2>&1 \
        || die "haproxy -c failed: $(cat "$OUT/haproxy-check.log")"
fi

mkdir -p "$OUT/squid"; chown proxy: "$OUT/squid" 2>/dev/null || chmod 0777 "$OUT/squid"
cat > "$CONF/squid.conf" <<EOF
# Squid as a pure forwarding proxy: no caching, no logging per request, internal DNS pointed at
# the test server (dns_nameservers takes IP addresses only, so the server listens on port 53).
http_port 127.0.0.1:$SQUID_PORT
acl localnet src 127.0.0.0/8
acl bench_ports port $SINK_PORT-$HOLD_PORT
acl CONNECT method CONNECT
http_access deny !bench_ports
http_access allow localnet
http_access deny all
cache deny all
cache_mem 0 MB
dns_nameservers $DNS_IP
hosts_file none
access_log none
cache_store_log none
cache_log $OUT/squid/cache.log
pid_filename $OUT/squid/squid.pid
coredump_dir $OUT/squid
max_filedescriptors $NOFILE
pinger_enable off
netdb_filename none
shutdown_lifetime 1 seconds
visible_hostname bench.test
EOF

mkdir -p "$OUT/tinyproxy"; chown nobody: "$OUT/tinyproxy" 2>/dev/null || chmod 0777 "$OUT/tinyproxy"
cat > "$CONF/tinyproxy.conf" <<EOF
# tinyproxy: CONNECT to the bench ports only, errors-only logging, enough client slots for the
# idle test.
User nobody
Group nogroup
Port $TINYPROXY_PORT
Listen 127.0.0.1
Timeout 600
LogFile "$OUT/tinyproxy/tinyproxy.log"
LogLevel Error
PidFile "$OUT/tinyproxy/tinyproxy.pid"
MaxClients $NOFILE
Allow 127.0.0.0/8
ConnectPort $SINK_PORT
ConnectPort $SOURCE_PORT
ConnectPort $ECHO_PORT
ConnectPort $ONESHOT_PORT
ConnectPort $HOLD_PORT
DisableViaHeader Yes
EOF

mkdir -p "$OUT/dante"
cat > "$CONF/danted.conf" <<EOF
# Dante: SOCKS on loopback, no authentication, no per-connection logging, no I/O timeout.
logoutput: $OUT/dante/danted.log
internal: 127.0.0.1 port = $DANTE_PORT
external: 127.0.0.1
clientmethod: none
socksmethod: none
user.privileged: root
user.unprivileged: nobody
timeout.negotiate: 30
timeout.io: 0
client pass {
        from: 127.0.0.0/8 to: 127.0.0.0/8
}
socks pass {
        from: 127.0.0.0/8 to: 127.0.0.0/8
        command: connect
}
EOF

# Dante, tinyproxy and microsocks resolve through libc (/etc/resolv.conf, port 53): each runs in
# a private mount namespace where /etc/resolv.conf is the bench one. The machine's file is
# untouched.
NSWRAP=(unshare -m --propagation private sh -c 'mount --bind "$0" /etc/resolv.conf && exec "$@"'
        "$OUT/resolv.conf")

start_carousel() {
    start_bg "$OUT/carousel.log" "$CAROUSEL" run -c "$CONF/carousel.toml"; PROXY_PID=$STARTED_PID
}
start_squid() {
    start_bg "$OUT/squid/stdout.log" squid -N -f "$CONF/squid.conf"; PROXY_PID=$STARTED_PID
}
start_tinyproxy() {
    start_bg "$OUT/tinyproxy/stdout.log" "${NSWRAP[@]}" tinyproxy -d -c "$CONF/tinyproxy.conf"
    PROXY_PID=$STARTED_PID
}
start_dante() {
    start_bg "$OUT/dante/stdout.log" "${NSWRAP[@]}" danted -f "$CONF/danted.conf" \
        -p "$OUT/dante/danted.pid"
    PROXY_PID=$STARTED_PID
}
start_microsocks() {
    # microsocks prints a line per connection and has no quiet flag: discard it.
    start_bg /dev/null "${NSWRAP[@]}" microsocks -i 127.0.0.1 -p "$MICROSOCKS_PORT"
    PROXY_PID=$STARTED_PID
}

# ---------------------------------------------------------------------------------------------
# 6. Measurements.
want() { want_step "$@"; }

lg() { # run one bounded loadgen step, keep its command line and JSON output
    echo "carousel-loadgen $*" >> "$CMDS"
    timeout --foreground --kill-after=10 $((STEP_LIMIT + 60)) "$LG" --threads 1 "$@" | tee -a "$RES"
}

lg_unrecorded() { # a warm-up: bounded like lg, its command kept, its output not a result
    echo "# warm-up, not recorded: carousel-loadgen $*" >> "$CMDS"
    timeout --foreground --kill-after=10 $((STEP_LIMIT + 60)) "$LG" --threads 1 "$@" >/dev/null
}

skip() { # label reason
    log "SKIP $1: $2"
    printf '{"test":"skipped","label":"%s","reason":"%s"}\n' "$1" "$2" >> "$RES"
}

time_wait_count() {
    ss -Htan state time-wait 2>/dev/null | wc -l
}

# Every short-lived tunnel leaves TIME_WAIT sockets (60 s on Linux): a rate test leaves tens of
# thousands, and the next contestant's connects then run ~20% slower (measured: carousel CONNECT
# 5,300 -> 4,000 conn/s with 54,000 TIME_WAIT sockets left by earlier steps). So every
# contestant starts from a drained table: wait (bounded) until few are left.
TW_SETTLED=2000
TW_WAIT_LIMIT=90
settle_time_wait() {
    local i n
    n=$(time_wait_count)
    for ((i = 0; i < TW_WAIT_LIMIT && n > TW_SETTLED; i++)); do
        sleep 1
        n=$(time_wait_count)
    done
    [ "$i" = 0 ] || log "waited ${i} s for TIME_WAIT sockets to drain ($n left)"
}

note_load() { # label: the machine's load and TIME_WAIT sockets when this proxy's turn starts
    settle_time_wait
    printf '{"test":"load","label":"%s","load1":%s,"time_wait":%s}\n' "$1" \
        "$(cut -d' ' -f1 /proc/loadavg)" "$(time_wait_count)" >> "$RES"
}

ECHO_T="$NAME:$ECHO_PORT"
ONESHOT_T="$NAME:$ONESHOT_PORT"
HOLD_T="$NAME:$HOLD_PORT"
direct_targets() { # port -> ip:port,ip:port,...
    local out="" ip
    for ip in "${BACKEND_IPS[@]}"; do out="$out${out:+,}$ip:$1"; done
    echo "$out"
}

measure() { # label mode proxy-addr start-fn
    local label=$1 mode=$2 proxy=$3 start=$4 pid common
    common=(--mode "$mode" --proxy "$proxy" --label "$label")
    note_load "$label"

    log "$label: throughput, connection rate, latency"
    "$start"; pid=$PROXY_PID
    if ! lg probe "${common[@]}" --target "$ECHO_T" --time-limit 20 >/dev/null; then
        skip "$label" "proxy did not carry a tunnel within 20 s"
        stop_pid "$pid" TERM; forget_pid "$pid"; return 0
    fi
    want throughput && { lg throughput "${common[@]}" --target "$NAME:$SOURCE_PORT" --target-up "$NAME:$SINK_PORT" \
        --bytes "$THR_BYTES" --repeat "$THR_REPEAT" --pid "$pid" --time-limit $STEP_LIMIT >/dev/null || true; }
    want rate && { lg rate "${common[@]}" --target "$ONESHOT_T" --count "$RATE_COUNT" --pid "$pid" --time-limit $STEP_LIMIT >/dev/null || true; }
    want latency && { lg latency "${common[@]}" --target "$ONESHOT_T" --concurrency "$LAT_C" --count "$LAT_COUNT" \
        --time-limit $STEP_LIMIT >/dev/null || true; }
    stop_pid "$pid" TERM; forget_pid "$pid"

    if want idle; then
        log "$label: $IDLE_COUNT idle tunnels (fresh process)"
        "$start"; pid=$PROXY_PID
        if lg probe "${common[@]}" --target "$ECHO_T" --time-limit 20 >/dev/null; then
            lg idle "${common[@]}" --target "$HOLD_T" --pid "$pid" --count "$IDLE_COUNT" \
                --parallel 32 --settle 2 --time-limit $STEP_LIMIT >/dev/null || true
        fi
        stop_pid "$pid" TERM; forget_pid "$pid"
    fi
    # Let closed tunnels' TIME_WAIT sockets and the proxy's exit settle before the next peer.
    sleep 2
}

# Load scenarios: each against a freshly started carousel with the admin listener on. The
# attack and the normal client run in one loadgen process (the normal client on its own thread).
start_carousel_attacks() {
    start_bg "$OUT/carousel-attacks-$1.log" "$CAROUSEL" run -c "$CONF/carousel-attacks.toml"
    PROXY_PID=$STARTED_PID
}
attack() { # kind, extra loadgen arguments...
    local kind=$1 pid probe; shift
    log "carousel: load scenario $kind"
    start_carousel_attacks "$kind"; pid=$PROXY_PID
    # Ready (and the normal client's name cached) before the attack; not a result line.
    probe=(probe --mode connect --proxy "127.0.0.1:$CAROUSEL_HTTP" --label "carousel-$kind" --target "$ECHO_T"
           --time-limit 20)
    echo "carousel-loadgen ${probe[*]}" >> "$CMDS"
    if timeout --foreground 40 "$LG" --threads 1 "${probe[@]}" >/dev/null; then
        lg attack --kind "$kind" --label carousel --proxy "127.0.0.1:$CAROUSEL_HTTP" --pid "$pid" \
            --admin "127.0.0.1:$CAROUSEL_ADMIN" --sources "$ATTACK_SOURCES" --normal-target "$ECHO_T" \
            --normal-interval-ms 50 --normal-timeout 5 --lead 2 --time-limit $STEP_LIMIT "$@" >/dev/null || true
    else
        skip "carousel-$kind" "carousel did not carry a tunnel within 20 s"
    fi
    kill -0 "$pid" 2>/dev/null || log "carousel exited during $kind (see $OUT/carousel-attacks-$kind.log)"
    stop_pid "$pid" TERM; forget_pid "$pid"
    sleep 1
}
run_attacks() {
    local hold=$(( HANDSHAKE_MS / 1000 + 15 ))   # well past the handshake timeout
    settle_time_wait
    attack slowloris-get --count "$SLOW_COUNT" --target "$NAME:$ECHO_PORT" --trickle 1 --hold "$hold" \
        --parallel 64
    # One wave of big heads is over in well under a second: repeat waves for a few seconds so
    # the normal client and the RSS sampler see the attack.
    attack big-head --count "$BIG_COUNT" --target "$NAME:$ECHO_PORT" --head-bytes $((1 << 20)) --hold "$hold" \
        --parallel 64 --repeat-for "$BIG_REPEAT"
    attack name-flood --count "$FLOOD_NAMES" --wild-suffix "$WILD" --wild-port "$ONESHOT_PORT" --parallel 32 \
        --idle "$FLOOD_IDLE" --dns-stats "$OUT/dns-stats.json" --op-timeout 10
}

note_step_load() { # step: like note_load, for the dns and proxyproto steps (their own section)
    settle_time_wait
    printf '{"test":"step_load","label":"%s","load1":%s,"time_wait":%s}\n' "$1" \
        "$(cut -d' ' -f1 /proc/loadavg)" "$(time_wait_count)" >> "$RES"
}

# Step dns: carousel's responder and dnsmasq run side by side (each idle while the other is
# measured); rounds alternate which goes first.
dns_ready() { # label addr: until an A answer comes back (carousel: once its members are known)
    local i
    for i in $(seq 1 40); do
        if timeout 10 "$LG" dns-load --server "$2" --name "$CLUSTER_NAME" --label "$1-ready" --concurrency 1 \
            --seconds 0.2 --warmup 0 --timeout-ms 200 2>/dev/null | grep -q '"answers":[1-9]'; then
            return 0
        fi
        sleep 0.5
    done
    return 1
}
run_dns() {
    local cpid mpid r order who
    log "DNS responder: carousel against dnsmasq, $ROUNDS rounds of ${DNS_SECONDS} s each"
    note_step_load dns
    echo "carousel run -c carousel-dns.toml" >> "$CMDS"
    start_bg "$OUT/carousel-dns.log" "$CAROUSEL" run -c "$CONF/carousel-dns.toml"; cpid=$STARTED_PID
    local dm=("$DNSMASQ" --no-daemon --no-resolv --no-hosts --bind-interfaces --listen-address="$DNSMASQ_IP"
              --port="$DNSMASQ_PORT" --cache-size=0 --local-ttl=2)
    local ip
    for ip in "${BACKEND_IPS[@]}"; do dm+=(--host-record="$CLUSTER_NAME,$ip"); done
    echo "${dm[*]}" >> "$CMDS"
    start_bg "$OUT/dnsmasq.log" "${dm[@]}"; mpid=$STARTED_PID
    if ! dns_ready carousel "$RESP_ADDR"; then
        skip carousel-responder "no answer from $RESP_ADDR within 20 s (see $OUT/carousel-dns.log)"
    elif ! dns_ready dnsmasq "$DNSMASQ_IP:$DNSMASQ_PORT"; then
        skip dnsmasq "no answer from $DNSMASQ_IP:$DNSMASQ_PORT within 20 s (see $OUT/dnsmasq.log)"
    else
        for r in $(seq 1 "$ROUNDS"); do
            if [ $((r % 2)) = 1 ]; then order="carousel dnsmasq"; else order="dnsmasq carousel"; fi
            for who in $order; do
                case $who in
                    carousel) lg dns-load --server "$RESP_ADDR" --name "$CLUSTER_NAME" --label carousel-responder \
                        --concurrency "$DNS_C" --seconds "$DNS_SECONDS" --warmup 0.5 --pid "$cpid" >/dev/null || true ;;
                    dnsmasq) lg dns-load --server "$DNSMASQ_IP:$DNSMASQ_PORT" --name "$CLUSTER_NAME" --label dnsmasq \
                        --concurrency "$DNS_C" --seconds "$DNS_SECONDS" --warmup 0.5 --pid "$mpid" >/dev/null || true ;;
                esac
            done
        done
    fi
    kill -0 "$cpid" 2>/dev/null || log "carousel exited during the dns step (see $OUT/carousel-dns.log)"
    stop_pid "$mpid" TERM; forget_pid "$mpid"
    stop_pid "$cpid" TERM; forget_pid "$cpid"
}

# Step proxyproto: one carousel (PROXY v2 listener and plain listener) behind one HAProxy (a
# frontend for each); sequential cycles, then $PP_C at a time; rounds alternate which goes first.
run_proxyproto() {
    local cpid hpid c r order who
    log "PROXY protocol: HAProxy -> carousel with and without PROXY v2, $ROUNDS rounds"
    note_step_load proxyproto
    echo "carousel run -c carousel-pp.toml" >> "$CMDS"
    start_bg "$OUT/carousel-pp.log" "$CAROUSEL" run -c "$CONF/carousel-pp.toml"; cpid=$STARTED_PID
    echo "haproxy -db -f haproxy.cfg" >> "$CMDS"
    start_bg "$OUT/haproxy.log" "$HAPROXY" -db -f "$CONF/haproxy.cfg"; hpid=$STARTED_PID
    local pp=(--mode connect --proxy "127.0.0.1:$HAPROXY_PP" --label haproxy-pp2)
    local plain=(--mode connect --proxy "127.0.0.1:$HAPROXY_PLAIN" --label haproxy-plain)
    if ! lg probe "${pp[@]}" --target "$ECHO_T" --time-limit 20 >/dev/null \
        || ! lg probe "${plain[@]}" --target "$ECHO_T" --time-limit 20 >/dev/null; then
        skip haproxy-pp2 "HAProxy -> carousel did not carry a tunnel within 20 s (see $OUT/haproxy.log, $OUT/carousel-pp.log)"
    else
        for c in 1 "$PP_C"; do
            for r in $(seq 1 "$ROUNDS"); do
                # Each round starts from a drained TIME_WAIT table (every cycle leaves one per hop),
                # then warms both paths up: after the idle wait, the first run of a round was
                # measured ~10% slower at C=$PP_C whichever path it was.
                settle_time_wait
                for who in pp plain; do
                    if [ "$who" = pp ]; then set -- "${pp[@]}"; else set -- "${plain[@]}"; fi
                    lg_unrecorded rate "$@" --target "$ONESHOT_T" --count "$PP_WARM" --concurrency "$c" \
                        --time-limit 60 || true
                done
                if [ $((r % 2)) = 1 ]; then order="pp plain"; else order="plain pp"; fi
                for who in $order; do
                    if [ "$who" = pp ]; then set -- "${pp[@]}"; else set -- "${plain[@]}"; fi
                    lg rate "$@" --target "$ONESHOT_T" --count "$([ "$c" = 1 ] && echo "$PP_COUNT" || echo "$PP_COUNT_C")" \
                        --concurrency "$c" --pid "$cpid" --front-pid "$hpid" --time-limit $STEP_LIMIT >/dev/null || true
                done
            done
            # Paired runs: both paths in one run, cycle by cycle (even cycles on the first
            # path), so other load on the machine hits both alike; which path is first
            # alternates. Then a control run with the plain path on both sides: the ratio's noise.
            for r in $(seq 1 "$ROUNDS"); do
                if [ $((r % 2)) = 1 ]; then
                    set -- --proxy "127.0.0.1:$HAPROXY_PP" --label haproxy-pp2 --proxy-b "127.0.0.1:$HAPROXY_PLAIN" --label-b haproxy-plain
                else
                    set -- --proxy "127.0.0.1:$HAPROXY_PLAIN" --label haproxy-plain --proxy-b "127.0.0.1:$HAPROXY_PP" --label-b haproxy-pp2
                fi
                lg rate-paired --mode connect "$@" --target "$ONESHOT_T" --count "$PP_PAIRED" --concurrency "$c" \
                    --time-limit $STEP_LIMIT >/dev/null || true
            done
            lg rate-paired --mode connect --proxy "127.0.0.1:$HAPROXY_PLAIN" --label haproxy-plain \
                --proxy-b "127.0.0.1:$HAPROXY_PLAIN" --label-b haproxy-plain-again --target "$ONESHOT_T" \
                --count "$PP_PAIRED" --concurrency "$c" --time-limit $STEP_LIMIT >/dev/null || true
        done
    fi
    kill -0 "$cpid" 2>/dev/null || log "carousel exited during the proxyproto step (see $OUT/carousel-pp.log)"
    stop_pid "$hpid" TERM; forget_pid "$hpid"
    stop_pid "$cpid" TERM; forget_pid "$cpid"
}

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)

# The comparison (direct, carousel, peers), unless only load scenarios were asked for.
if want throughput || want rate || want latency || want idle; then
log "direct: throughput, connection rate, latency"
note_load direct
DIRECT_ECHO=$(direct_targets $ECHO_PORT)
lg probe --mode direct --label direct --target "$DIRECT_ECHO" --time-limit 20 >/dev/null \
    || die "backends do not answer directly"
want throughput && { lg throughput --mode direct --label direct --target "$(direct_targets $SOURCE_PORT)" \
    --target-up "$(direct_targets $SINK_PORT)" --bytes "$THR_BYTES" --repeat "$THR_REPEAT" \
    --time-limit $STEP_LIMIT >/dev/null || true; }
want rate && { lg rate --mode direct --label direct --target "$(direct_targets $ONESHOT_PORT)" --count "$RATE_COUNT" \
    --time-limit $STEP_LIMIT >/dev/null || true; }
want latency && { lg latency --mode direct --label direct --target "$(direct_targets $ONESHOT_PORT)" --concurrency "$LAT_C" \
    --count "$LAT_COUNT" --time-limit $STEP_LIMIT >/dev/null || true; }

measure carousel-connect connect "127.0.0.1:$CAROUSEL_HTTP" start_carousel
measure carousel-socks5 socks5 "127.0.0.1:$CAROUSEL_SOCKS" start_carousel
for peer in "${PEERS[@]}"; do
    case $peer in
        squid) measure squid-connect connect "127.0.0.1:$SQUID_PORT" start_squid ;;
        tinyproxy)
            if [ "$NS_OK" = 1 ]; then measure tinyproxy-connect connect "127.0.0.1:$TINYPROXY_PORT" start_tinyproxy
            else skip tinyproxy-connect "no mount namespace for its resolver"; fi ;;
        dante)
            if [ "$NS_OK" = 1 ]; then measure dante-socks5 socks5 "127.0.0.1:$DANTE_PORT" start_dante
            else skip dante-socks5 "no mount namespace for its resolver"; fi ;;
        microsocks)
            if [ "$NS_OK" = 1 ]; then measure microsocks-socks5 socks5 "127.0.0.1:$MICROSOCKS_PORT" start_microsocks
            else skip microsocks-socks5 "no mount namespace for its resolver"; fi ;;
    esac
done
fi
want attacks && run_attacks
want dns && run_dns
want proxyproto && run_proxyproto
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)

stop_pid "$BACKEND_PID" TERM; forget_pid "$BACKEND_PID"
stop_pid "$DNS_PID" TERM; forget_pid "$DNS_PID"
grep -h dns_stopped "$OUT/dns.log" >> "$RES" 2>/dev/null || true

# ---------------------------------------------------------------------------------------------
# 7. Report.
"$LG" report "$RES" --idle-count "$IDLE_COUNT" > "$OUT/tables.md"
echo
cat "$OUT/tables.md"
echo

ver() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "not installed"; }
ELAPSED=$(( $(date +%s) - START_EPOCH ))
NOTES_BEGIN='<!-- notes:begin -->'
NOTES_END='<!-- notes:end -->'
OLD_NOTES=""
if [ -f "$DOC" ] && grep -q "$NOTES_BEGIN" "$DOC"; then
    OLD_NOTES=$(awk -v b="$NOTES_BEGIN" -v e="$NOTES_END" '$0==b{on=1;next} $0==e{on=0} on' "$DOC")
fi
[ -n "$OLD_NOTES" ] || OLD_NOTES="(No analysis written for this run yet.)"

mkdir -p "$(dirname "$DOC")"
{
    echo "# Benchmarks"
    echo
    echo "carousel against Squid, Dante, tinyproxy and microsocks, and against a direct"
    echo "connection, on one machine over loopback. Produced by \`${RUN_ENV}bench/run.sh$RUN_FLAG\`"
    echo "(run $STAMP, $ELAPSED s including builds). Numbers on a shared 2-core machine are noisy:"
    echo "compare ratios from the same run, not absolute numbers across runs."
    echo
    echo "## Goal and targets"
    echo
    echo "From the issue: *carousel must be measurably ahead of Squid, Dante, tinyproxy and microsocks"
    echo "on the same machine, and close to a direct connection.* Targets: tunnel throughput ≥ 0.9×"
    echo "direct; connection rate ≥ 2× Squid's and ≥ 0.8× direct; 10,000 idle tunnels at ≤ 32 KiB of"
    echo "proxy memory each; added latency p50 ≤ 100 µs over direct."
    echo
    cat "$OUT/tables.md"
    echo
    echo "## What limits the unmet targets"
    echo
    echo "$NOTES_BEGIN"
    echo "$OLD_NOTES"
    echo "$NOTES_END"
    echo
    echo "## Machine"
    echo
    echo "| | |"
    echo "|---|---|"
    echo "| cores (nproc) | $(nproc) |"
    echo "| CPU | $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo) |"
    echo "| kernel | $(uname -srm) |"
    echo "| memory | $(awk '/MemTotal/ {printf "%.1f GiB", $2/1048576}' /proc/meminfo) |"
    echo "| OS | Debian $(cat /etc/debian_version 2>/dev/null || echo '?') |"
    echo "| rustc | $(rustc --version 2>/dev/null) |"
    echo "| load average (1/5/15 min) at start / end | $LOAD_START / $LOAD_END |"
    echo "| open-file limit (soft/hard) | $NOFILE / $(ulimit -Hn) |"
    echo
    echo "## Contestants"
    echo
    echo "| proxy | version | port | protocols measured |"
    echo "|---|---|---|---|"
    echo "| carousel | $(cd "$ROOT" && git describe --always --dirty 2>/dev/null || echo '?') (release build) | $CAROUSEL_HTTP (HTTP), $CAROUSEL_SOCKS (SOCKS) | CONNECT, SOCKS5 |"
    echo "| Squid | $(ver squid) | $SQUID_PORT | CONNECT |"
    echo "| tinyproxy | $(ver tinyproxy) | $TINYPROXY_PORT | CONNECT |"
    echo "| Dante (danted) | $(ver dante-server) | $DANTE_PORT | SOCKS5 |"
    echo "| microsocks | $(ver microsocks) | $MICROSOCKS_PORT | SOCKS5 |"
    if [ ${#SKIPPED[@]} -gt 0 ]; then echo; echo "Skipped: ${SKIPPED[*]}."; fi
    echo
    echo "## How it is measured"
    echo
    echo "- **Topology.** Everything is on loopback: the load generator (\`bench/loadgen\`, one"
    echo "  tokio thread), a test DNS server (hickory-server) on $DNS_IP:53 serving \`$NAME\`"
    echo "  with A records ${BACKEND_IPS[*]} (TTL 300 s, AAAA → NODATA), and backends on each of"
    echo "  those addresses (one tokio thread): sink :$SINK_PORT, source :$SOURCE_PORT, echo :$ECHO_PORT"
    echo "  (readiness probes), one-shot :$ONESHOT_PORT (32-byte echo, then closes) and hold :$HOLD_PORT"
    echo "  (1-byte echoes until \`Q\`, then closes). The backends always close first, so TIME_WAIT"
    echo "  sockets stay on the backend's and the proxy listener's side: Dante binds its outgoing"
    echo "  socket to 127.0.0.1 port 0 before connecting, and with clients closing first it ran out"
    echo "  of ephemeral ports (\`bindexternaladdr(): could not bind tcp port 0\`) in the idle test."
    echo "  Clients always ask for the *name* (CONNECT \`$NAME:port\`; SOCKS5 with a domain-name"
    echo "  address), so every proxy resolves it itself; the direct baseline dials the IP addresses"
    echo "  (rotated). One proxy runs at a time; client, proxy and backends share the $(nproc) cores."
    echo "- **DNS for the peers.** Squid's \`dns_nameservers\` takes IP addresses only (Squid 5.7 logs"
    echo "  \`WARNING: rejecting '127.0.0.153:5353' as a name server, because it is not a numeric IP"
    echo "  address\` for \`ip:port\`), so the test DNS server listens on port 53 of its own loopback"
    echo "  address $DNS_IP. Dante, tinyproxy and microsocks use the libc resolver, which reads"
    echo "  /etc/resolv.conf: each is started in a private mount namespace (\`unshare -m\`) in which"
    echo "  /etc/resolv.conf is bind-mounted to \`nameserver $DNS_IP\`. The machine's own"
    echo "  /etc/resolv.conf and /etc/hosts are never changed. carousel is given \`$DNS_IP:53\`."
    echo "  Squid and carousel cache answers (TTL); the libc-resolver peers query DNS for every"
    echo "  tunnel (no nscd), which is how they run by default."
    echo "- **Throughput.** $((THR_BYTES >> 20)) MiB per transfer through a fresh tunnel,"
    echo "  $THR_REPEAT times each way (down: source → client; up: client → sink, finished when the sink"
    echo "  reports the byte count); the median MiB/s is reported."
    echo "- **CPU per GiB.** utime+stime (+ waited-for children) of the proxy's whole process tree"
    echo "  from /proc/PID/stat, before and after the throughput step, divided by the GiB moved."
    echo "- **Connection rate.** $RATE_COUNT sequential cycles of: open tunnel (connect + CONNECT or"
    echo "  SOCKS5 handshake), send 32 bytes, read the 32-byte echo, wait for the backend's close to"
    echo "  arrive through the proxy, close. conn/s = cycles / wall time; proxy CPU µs/conn = the"
    echo "  proxy tree's CPU time over the step ÷ cycles. The per-cycle time from connect to echo,"
    echo "  p50, is the unloaded (C=1) latency."
    echo "- **Latency.** C=$LAT_C concurrent closed-loop clients, $LAT_COUNT cycles each (the cycle above,"
    echo "  each on a fresh tunnel); p50/p99 of connect → echo. In a closed loop p50 ≈ C ÷ cycle"
    echo "  rate (Little's law), so at C=$LAT_C this mostly measures capacity on $(nproc) shared cores (one"
    echo "  client thread, one backend thread, the proxy); the C=1 numbers show the proxy's own"
    echo "  added latency. The target is judged on both."
    echo "- **Memory per idle tunnel.** On a freshly started proxy: 64 warm-up tunnels, 2 s, read the"
    echo "  tree's memory; open $IDLE_COUNT tunnels (32 at a time, each checked with a 1-byte echo),"
    echo "  2 s, read again; (after − before) / tunnels opened. After 64 failed opens the test stops"
    echo "  opening (a proxy out of descriptors otherwise costs a 10 s timeout per tunnel), and the"
    echo "  target counts as not met. RSS is the sum of VmRSS over the process"
    echo "  tree (as asked; it counts shared pages once per process, which penalises multi-process"
    echo "  Dante); PSS (smaps_rollup) splits shared pages and is the fairer number for Dante."
    if [ "$IDLE_COUNT" -lt 10000 ]; then
        echo "  **Scaled down:** the idle test opened $IDLE_COUNT instead of 10,000 tunnels because the"
        echo "  open-file hard limit here is $(ulimit -Hn) and cannot be raised (no CAP_SYS_RESOURCE in"
        echo "  this container); a proxy needs at least two descriptors per tunnel."
    fi
    echo "- **Same start for everyone.** One proxy runs at a time, and each (direct included) starts"
    echo "  only once the TIME_WAIT sockets earlier steps left behind have drained to ≤ $TW_SETTLED"
    echo "  (waiting at most ${TW_WAIT_LIMIT} s; the count at the start is in the raw table). Tens of"
    echo "  thousands of them slow every later contestant's connects by about a fifth."
    echo "- **CPU busy.** The whole machine's busy share (/proc/stat, all but idle and iowait) over"
    echo "  the throughput step: below 100% means the transfer waits on hand-offs, not on CPU."
    if want attacks; then
        echo "- **Load scenarios (step \`attacks\`, carousel only).** Each scenario starts a fresh carousel"
        echo "  with \`carousel-attacks.toml\` (the configuration above plus the admin listener on"
        echo "  127.0.0.1:$CAROUSEL_ADMIN, whose /metrics is scraped before and after) and runs one"
        echo "  \`carousel-loadgen attack\` process: the attack, from $ATTACK_SOURCES (each socket bound"
        echo "  before connect), and on its own thread a *normal client* from 127.0.0.1: one CONNECT tunnel"
        echo "  to \`$ECHO_T\` and one 32-byte echo every 50 ms, each cycle bounded by 5 s, from 2 s"
        echo "  before the attack to 2 s after it. RSS (VmRSS) and descriptors (/proc/PID/fd) of the"
        echo "  carousel process are sampled every 10 ms and 100 ms; CPU is utime+stime from /proc/PID/stat."
        echo "  *slowloris-get*: $SLOW_COUNT connections send \`GET http://$NAME:$ECHO_PORT/ HTTP/1.1\`"
        echo "  and a Host line at once, then header lines (\`X-Pad-K: x\`) one byte per second, never"
        echo "  ending the head; carousel's \`server.handshake_timeout_ms\` is $HANDSHAKE_MS ms here, and"
        echo "  each connection is held at most $(( HANDSHAKE_MS / 1000 + 15 )) s. *big-head*: $BIG_COUNT"
        echo "  connections at once each write an unfinished 1 MiB head (the same request line, then one"
        echo "  \`X-Big\` header that never ends) as fast as carousel takes it, reading its answer; new"
        echo "  waves of $BIG_COUNT follow for $BIG_REPEAT s."
        echo "  *name-flood*: $FLOOD_NAMES distinct names \`nK.$WILD\` through CONNECT (32 at a time, each"
        echo "  one echo with the one-shot backend on :$ONESHOT_PORT); the test DNS server answers"
        echo "  \`*.$WILD\` with ${BACKEND_IPS[0]} at a TTL of $WILD_TTL s and counts queries; then"
        echo "  $FLOOD_IDLE s with only the normal client (whose name is cached for 300 s): DNS queries,"
        echo "  carousel's \`carousel_dns_refreshes_total\`, descriptors and CPU over that window."
    fi
    if want dns; then
        echo "- **DNS responder (step \`dns\`).** carousel with \`carousel-dns.toml\` (the configuration"
        echo "  above plus \`[responder]\` on $RESP_ADDR and the cluster \`$CLUSTER_NAME\` of the four"
        echo "  backends, whose members it takes from the test DNS server) and dnsmasq on"
        echo "  $DNSMASQ_IP:$DNSMASQ_PORT answering the same four A records from memory (\`--host-record\`,"
        echo "  TTL 2 like carousel's, \`--cache-size=0\`) run side by side. \`carousel-loadgen dns-load\`"
        echo "  (one thread, one UDP socket) keeps $DNS_C A queries in flight (random ids, answers matched"
        echo "  by id, 1 s timeout) for 0.5 s of warm-up and $DNS_SECONDS s measured; $ROUNDS rounds,"
        echo "  alternating which server goes first. CPU: the server process's utime+stime over the"
        echo "  measured window, from /proc/PID/stat."
    fi
    if want proxyproto; then
        echo "- **PROXY protocol (step \`proxyproto\`).** One carousel with \`carousel-pp.toml\` (the"
        echo "  configuration above plus an HTTP listener on :$CAROUSEL_PP with \`proxy_protocol = \"v2\"\`,"
        echo "  trusting 127.0.0.1, and a plain one on :$CAROUSEL_PLAIN) behind one HAProxy (mode tcp; frontend"
        echo "  :$HAPROXY_PP → :$CAROUSEL_PP with \`send-proxy-v2\`, frontend :$HAPROXY_PLAIN → :$CAROUSEL_PLAIN without)."
        echo "  \`carousel-loadgen rate\` through each frontend: cycles of CONNECT to \`$ONESHOT_T\`, 32-byte"
        echo "  echo, backend closes; $PP_COUNT sequentially, then $PP_COUNT_C with $PP_C at a time; $ROUNDS rounds"
        echo "  each, alternating which path goes first, each round from a drained TIME_WAIT table"
        echo "  (≤ $TW_SETTLED) and after $PP_WARM unrecorded warm-up cycles on each path. Then, for each"
        echo "  concurrency, $ROUNDS paired runs (\`carousel-loadgen rate-paired\`: $PP_PAIRED cycles alternating"
        echo "  between the two frontends cycle by cycle, so the rest of the machine's load hits both paths"
        echo "  alike; a path's conn/s = its cycles × concurrency ÷ the time its cycles took) and one control"
        echo "  run with the plain frontend on both sides, whose ratio shows the method's own noise."
        echo "  CPU per connection for carousel and for HAProxy (utime+stime over the run ÷ cycles)."
    fi
    echo "- **Bounds.** Every step has a count and a time limit (${STEP_LIMIT} s), every connect and"
    echo "  exchange a 10 s timeout; every process the script starts is stopped when it exits."
    echo
    echo "## Commands"
    echo
    echo '```sh'
    echo "${RUN_ENV}bench/run.sh$RUN_FLAG"
    echo "# which ran, with the DNS server and backends:"
    echo "carousel-loadgen dns --listen $DNS_IP:53 --record $NAME=$backend_csv --record '*.$WILD=${BACKEND_IPS[0]}@$WILD_TTL'$(want dns && echo " --record $CLUSTER_NAME=$backend_csv") --ttl 300 --stats-file \$OUT/dns-stats.json --time-limit 7200"
    echo "carousel-loadgen backend --addrs $backend_csv --sink $SINK_PORT --source $SOURCE_PORT --echo $ECHO_PORT --oneshot $ONESHOT_PORT --hold $HOLD_PORT --time-limit 7200"
    echo "carousel run -c carousel.toml"
    echo "squid -N -f squid.conf"
    echo "unshare -m sh -c 'mount --bind resolv.conf /etc/resolv.conf && exec tinyproxy -d -c tinyproxy.conf'"
    echo "unshare -m sh -c 'mount --bind resolv.conf /etc/resolv.conf && exec danted -f danted.conf'"
    echo "unshare -m sh -c 'mount --bind resolv.conf /etc/resolv.conf && exec microsocks -i 127.0.0.1 -p $MICROSOCKS_PORT'"
    echo "# measurements, in order (each proxy is restarted before its idle test):"
    sed "s#$OUT#\$OUT#g" "$CMDS"
    echo '```'
    echo
    echo "## Configurations"
    for f in carousel.toml carousel-attacks.toml carousel-dns.toml carousel-pp.toml haproxy.cfg squid.conf \
             tinyproxy.conf danted.conf; do
        [ -f "$CONF/$f" ] || continue
        echo
        echo "\`$f\`:"
        echo
        echo '```'
        sed "s#$OUT#\$OUT#g" "$CONF/$f"
        echo '```'
    done
    echo
    echo "microsocks: \`microsocks -i 127.0.0.1 -p $MICROSOCKS_PORT\` (it has no configuration file)."
    echo
    echo "## Raw results (JSON lines)"
    echo
    echo '```json'
    cat "$RES"
    echo '```'
} > "$DOC"
log "report written to ${DOC#$ROOT/} (run directory ${OUT#$ROOT/})"
