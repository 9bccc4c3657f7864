#!/usr/bin/env bash
# Runs inside a throwaway systemd container (deploy/check.sh, check_systemd_live) with
# deploy/systemd/* installed as deploy/README.md says and carousel's binary at
# /usr/local/bin/carousel (a second copy at /root/carousel-new). Tests the real unit under the
# real systemd: start with the whole sandbox, every client mode, the DNS responder on port 53
# (CAP_NET_BIND_SERVICE, the only capability), reload (SIGHUP, same process), a rejected reload
# of a broken config, the graceful upgrade under client load, and stop.
set -euo pipefail

UNIT=carousel.service
CONFIG=/etc/carousel/carousel.toml
BACKEND=http://127.0.0.1:18000/index.html

fail() {
    echo "  FAIL: $*"
    systemctl --no-pager status "$UNIT" 2>&1 | sed -n '1,12s/^/    /p' || true
    journalctl -u "$UNIT" --no-pager -n 40 2>&1 | sed 's/^/    /' || true
    exit 1
}
show() { systemctl show -p "$1" --value "$UNIT"; }
wait_for() { # seconds, command...
    local end=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -lt "$end" ] || return 1
        sleep 0.2
    done
}
ready() { curl -fs -o /dev/null --max-time 2 http://127.0.0.1:9090/readyz; }
# One A query to the responder on 127.0.0.1:53; prints "RCODE AA TTL ADDRESS..." (TTL of the
# last A record).
dns_a() {
    python3 - "$1" <<'PY'
import socket, struct, sys
name = sys.argv[1]
q = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0" + struct.pack(">HH", 1, 1)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(1)
try:
    s.sendto(q, ("127.0.0.1", 53))
    r = s.recv(4096)
except OSError as e:
    print("no-answer", e)
    sys.exit(0)
flags, an = struct.unpack(">H", r[2:4])[0], struct.unpack(">H", r[6:8])[0]
i, out, ttl = len(q), [], "-"
for _ in range(an):
    while r[i] and r[i] < 0xC0:  # the owner name: labels, maybe ending in a pointer
        i += r[i] + 1
    i += 2 if r[i] else 1
    rtype, _, t, rdlen = struct.unpack(">HHIH", r[i:i + 10])
    if rtype == 1:
        out.append(socket.inet_ntoa(r[i + 10:i + 14]))
        ttl = t
    i += 10 + rdlen
print(flags & 0xF, int(bool(flags & 0x400)), ttl, *out)
PY
}

# A backend on loopback (the container has its own network namespace: loopback only).
mkdir -p /tmp/www
echo hello >/tmp/www/index.html
(cd /tmp/www && setsid python3 -m http.server 18000 --bind 127.0.0.1 >/dev/null 2>&1 &)
wait_for 10 curl -fs -o /dev/null "$BACKEND" || fail "test backend did not start"
# Loopback destinations are denied unless a rule names them: allow the test backend only. Then
# the DNS responder on port 53, as the example in carousel.toml has it but on loopback (the
# container has no other address), for a cluster whose one member is the test backend. The
# container has no nameserver: the cluster name's own lookup goes to a closed port and fails
# at once.
cat >>"$CONFIG" <<'EOF'

# Test only (deploy/tools/systemd-in-container.sh): the container's loopback backend.
[[access.rule]]
name = "test backend"
action = "allow"
clients = ["127.0.0.0/8"]
destinations = ["127.0.0.1/32"]
ports = [18000]

[dns]
nameservers = ["127.0.0.1:9"]
timeout_ms = 200
attempts = 1

[responder]
listen = ["127.0.0.1:53"]
ttl_seconds = 2

[[cluster]]
name = "chat.carousel.test"
ports = [18000]
static_members = ["127.0.0.1"]
[cluster.health]
interval_ms = 500
rise = 1
EOF

systemctl start "$UNIT" || fail "systemctl start"
main=$(show MainPID)
if [ "$(show ActiveState)" != active ] || [ "$main" -le 0 ]; then fail "not active after start"; fi
[ "$(cat /run/carousel/carousel.pid)" = "$main" ] || fail "PID file does not hold MainPID"
[ "$(ps -o user= -p "$main")" = carousel ] || fail "main process does not run as user carousel"
wait_for 10 ready || fail "/readyz not 200"
for mode in "-x http://127.0.0.1:3128" "-p -x http://127.0.0.1:3128" "--socks4 127.0.0.1:1080" \
    "--socks4a 127.0.0.1:1080" "--socks5 127.0.0.1:1080" "--socks5-hostname 127.0.0.1:1080"; do
    # shellcheck disable=SC2086 # $mode is several curl options
    [ "$(curl -fsS --max-time 5 $mode "$BACKEND")" = hello ] || fail "proxying with curl $mode"
done
echo "  start: active as user carousel in the sandbox; HTTP, CONNECT, SOCKS4, 4a, 5 proxy"

# Port 53 as user carousel: the unit's ambient CAP_NET_BIND_SERVICE, and no other capability.
healthy_answer() { [ "$(dns_a chat.carousel.test)" = "0 1 2 127.0.0.1" ]; }
wait_for 15 healthy_answer || fail "DNS responder on 127.0.0.1:53: $(dns_a chat.carousel.test) (want NOERROR, AA, TTL 2, 127.0.0.1)"
[ "$(dns_a example.com | cut -d' ' -f1)" = 5 ] || fail "DNS responder: a name outside the clusters is not REFUSED"
caps=$(sed -n 's/^CapEff:[[:space:]]*//p' "/proc/$main/status")
[ "$caps" = 0000000000000400 ] || fail "main process capabilities $caps, want CAP_NET_BIND_SERVICE (0x400) only"
echo "  DNS responder: port 53 bound as user carousel (CapEff 0x400: CAP_NET_BIND_SERVICE only); cluster name answered, other names REFUSED"

systemctl reload "$UNIT" || fail "systemctl reload"
sleep 1
if [ "$(show MainPID)" != "$main" ] || [ "$(show NRestarts)" != 0 ]; then
    fail "systemctl reload (SIGHUP) did not keep the process: carousel must reload on SIGHUP, not exit"
fi
ready || fail "/readyz not 200 after reload"
cp "$CONFIG" /root/config.good
echo 'no_such_key = 1' >>"$CONFIG"
if systemctl reload "$UNIT" 2>/dev/null; then fail "a broken config was accepted by systemctl reload"; fi
cp /root/config.good "$CONFIG"
if [ "$(show MainPID)" != "$main" ] || [ "$(show ActiveState)" != active ]; then
    fail "a rejected reload disturbed the service"
fi
echo "  reload: SIGHUP keeps the process; a broken config fails the reload job and changes nothing"

# Graceful upgrade while a client keeps going through the proxy.
(
    ok=0 bad=0
    while [ ! -e /tmp/stop-client ]; do
        if curl -fs -o /dev/null --max-time 3 -x http://127.0.0.1:3128 "$BACKEND"; then
            ok=$((ok + 1))
        else
            bad=$((bad + 1))
        fi
        sleep 0.05
    done
    echo "$ok $bad" >/tmp/client-result
) &
client=$!
sleep 1
carousel-upgrade /root/carousel-new >/tmp/upgrade.log 2>&1 || fail "carousel-upgrade: $(cat /tmp/upgrade.log)"
new=$(show MainPID)
if [ "$new" = "$main" ] || [ "$(show ActiveState)" != active ]; then fail "MainPID did not move to the new process"; fi
[ "$(cat /run/carousel/carousel.pid)" = "$new" ] || fail "PID file does not hold the new MainPID"
systemctl show -p ExecReload "$UNIT" | grep -q 'kill -HUP' || fail "the upgrade drop-in was not removed"
wait_for 40 sh -c "! kill -0 $main 2>/dev/null" || fail "the old process $main did not exit"
sleep 1
touch /tmp/stop-client
wait "$client"
read -r ok bad </tmp/client-result
if [ "$ok" -le 10 ] || [ "$bad" -ne 0 ]; then fail "client requests during the upgrade: $ok ok, $bad failed"; fi
ready || fail "/readyz not 200 after the upgrade"
wait_for 5 healthy_answer || fail "DNS responder after the upgrade: $(dns_a chat.carousel.test)"
echo "  upgrade: MainPID $main -> $new, old process exited, $ok client requests, none failed; the new process answers on port 53"

start=$SECONDS
systemctl stop "$UNIT" || fail "systemctl stop"
if [ "$(show ActiveState)" != inactive ] || [ "$(show Result)" != success ]; then fail "stop did not end cleanly"; fi
echo "  stop: clean, $((SECONDS - start)) s"
