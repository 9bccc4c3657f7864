#!/usr/bin/env bash
# What authentication costs a kept-alive connection (issue 22), in one run so the ratios mean
# something on a noisy machine: N forwarded requests on one curl connection through carousel
# with no authentication, with Basic (checked once, then the verification cache) and with
# Negotiate (Kerberos, a real MIT KDC on loopback). The origin is HAProxy answering 200 itself,
# so the proxy's part dominates.
#
#   bench/auth.sh                 release build, N=2000, 3 rounds
#   N=5000 ROUNDS=5 bench/auth.sh
#
# Everything listens on loopback; every loop is bounded (ROUNDS × 3 runs of N requests).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-2000}
ROUNDS=${ROUNDS:-3}
CAROUSEL=${CAROUSEL_BIN:-target/release/carousel}
[ -x "$CAROUSEL" ] || cargo build --release
scripts/ensure-deps.sh haproxy htpasswd:apache2-utils
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$tmp/kdc/kdc.pid" ] && kill "$(cat "$tmp/kdc/kdc.pid")" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT
ORIGIN=19401 KDC=19402 ADMIN=19403
PORT_NONE=19411 PORT_BASIC=19412 PORT_NEG=19413

bash tests/identity/start-kdc.sh "$tmp/kdc" $KDC >/dev/null
bash tests/identity/kinit.sh "$tmp/kdc" alice alice-pw "$tmp/alice.cc"
export KRB5_CONFIG=$tmp/kdc/krb5.conf KRB5CCNAME=FILE:$tmp/alice.cc KRB5RCACHEDIR=$tmp/kdc

cat >"$tmp/haproxy.cfg" <<CFG
defaults
  mode http
  timeout connect 1s
  timeout client 30s
  timeout server 30s
frontend origin
  bind 127.0.0.1:$ORIGIN
  http-request return status 200 content-type text/plain string ok
CFG
haproxy -f "$tmp/haproxy.cfg" -db >/dev/null 2>&1 &
pids+=($!)

htpasswd -nbB -C 10 alice alice-pw | head -1 >"$tmp/htpasswd"
proxy() { # name port access
  cat >"$tmp/$1.toml" <<CFG
[server]
threads = 2
pid_file = "$tmp/$1.pid"
upgrade_sock = "$tmp/$1.sock"
[[listener]]
address = "127.0.0.1:$2"
protocols = ["http"]
[admin]
enabled = false
[log]
access = "off"
[access]
$3
[[access.rule]]
action = "allow"
$4
destinations = ["127.0.0.0/8"]
CFG
  "$CAROUSEL" run -c "$tmp/$1.toml" >"$tmp/$1.log" 2>&1 &
  pids+=($!)
}
proxy none $PORT_NONE "" ""
proxy basic $PORT_BASIC "users_file = \"$tmp/htpasswd\"" 'users = ["alice"]'
proxy negotiate $PORT_NEG "[access.kerberos]
keytab = \"$tmp/kdc/proxy.keytab\"" 'users = ["alice@CAROUSEL.TEST"]'
for p in $PORT_NONE $PORT_BASIC $PORT_NEG $ORIGIN; do
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$p) 2>/dev/null && break; sleep 0.05; done
done
{ for _ in $(seq "$N"); do printf 'url = "http://127.0.0.1:%s/"\noutput = "/dev/null"\n' $ORIGIN; done; } >"$tmp/urls"

run() { # mode -> requests/s
  local args
  case $1 in
    none) args=(-x "http://127.0.0.1:$PORT_NONE") ;;
    basic) args=(-x "http://127.0.0.1:$PORT_BASIC" -U alice:alice-pw) ;;
    negotiate) args=(-x "http://proxy.carousel.test:$PORT_NEG" --resolve "proxy.carousel.test:$PORT_NEG:127.0.0.1" --proxy-negotiate -U :) ;;
  esac
  local t0 t1 codes
  t0=$(date +%s.%N)
  codes=$(timeout 300 curl -q -s "${args[@]}" -w '%{http_code}\n' -K "$tmp/urls" | sort | uniq -c | tr -s ' ')
  t1=$(date +%s.%N)
  [ "$codes" = " $N 200" ] || { echo "$1: unexpected answers: $codes" >&2; cat "$tmp/$1.log" >&2; exit 1; }
  python3 -c "print(f'{$N/($t1-$t0):.0f}')"
}
declare -A all
for r in $(seq "$ROUNDS"); do
  for mode in none basic negotiate; do all[$mode]+="$(run $mode) "; done
done
median() { tr ' ' '\n' | sed '/^$/d' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| mode | requests/s on one kept-alive connection (N=$N) | rounds |"
echo "|---|---|---|"
for mode in none basic negotiate; do
  echo "| $mode | $(echo "${all[$mode]}" | median) | ${all[$mode]}|"
done
none=$(echo "${all[none]}" | median)
echo
echo "| ratio | value |"
echo "|---|---|"
for mode in basic negotiate; do
  python3 -c "print(f'| $mode ÷ none | {$(echo "${all[$mode]}" | median)/$none:.2f} |')"
done
