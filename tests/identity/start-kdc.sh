#!/usr/bin/env bash
# Start a throw-away MIT Kerberos KDC for realm CAROUSEL.TEST, entirely under DIR.
#
# Usage: start-kdc.sh DIR PORT
#
# Produces (all under DIR):
#   krb5.conf      client/library profile  -> callers set KRB5_CONFIG=DIR/krb5.conf
#   kdc.conf       KDC profile             -> KRB5_KDC_PROFILE=DIR/kdc.conf (only for kadmin.local/kdb5_util)
#   db/            KDC database (db2) + stash file
#   proxy.keytab   HTTP/proxy.carousel.test@CAROUSEL.TEST + rcmd/proxy.carousel.test@CAROUSEL.TEST
#   other.keytab   HTTP/other.carousel.test@CAROUSEL.TEST
#   kdc.pid        pid of krb5kdc (stop with: kill "$(cat DIR/kdc.pid)")
#   kdc.log        KDC log (plus kdc.stderr)
# Users: alice/alice-pw, bob/bob-pw, carol/carol-pw.
# KDC listens on 127.0.0.1:PORT, UDP and TCP. Prints only "ready" on success.
set -euo pipefail

if [ "$#" -ne 2 ]; then
    echo "usage: $0 DIR PORT" >&2
    exit 2
fi
DIR=$1
PORT=$2
REALM=CAROUSEL.TEST

case "$PORT" in ''|*[!0-9]*) echo "$0: bad PORT '$PORT'" >&2; exit 2 ;; esac
[ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || { echo "$0: bad PORT '$PORT'" >&2; exit 2; }

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

# True if PID is a live (non-zombie) krb5kdc. kill -0 alone is not enough:
# a killed KDC may linger as a zombie until its new parent reaps it.
proc_alive() {
    local pid=$1 stat
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    case "$stat" in *") Z "*|*") X "*) return 1 ;; esac
}
kdc_alive() {
    proc_alive "$1" && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = krb5kdc ]
}

# A KDC from this DIR that was just killed may still be exiting: give it up
# to 5 s, then refuse to clobber a KDC that is still running.
if [ -f "$DIR/kdc.pid" ]; then
    old_pid=$(cat "$DIR/kdc.pid" 2>/dev/null || true)
    for _ in $(seq 1 50); do
        kdc_alive "$old_pid" || break
        sleep 0.1
    done
    if kdc_alive "$old_pid"; then
        echo "start-kdc.sh: a KDC is already running from $DIR (pid $old_pid)" >&2
        exit 1
    fi
fi

# krb5kdc sets SO_REUSEPORT, so a second KDC on a busy port starts "fine" and
# the kernel then spreads requests across both. Refuse a port already in use.
port_busy() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -H -ltnu "sport = :$1" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}
if port_busy "$PORT"; then
    echo "start-kdc.sh: port $PORT is already in use" >&2
    exit 1
fi

# Fresh realm every time: the database is cheap to create.
rm -rf "$DIR/db" "$DIR/proxy.keytab" "$DIR/other.keytab" "$DIR/kdc.pid" \
       "$DIR/kdc.log" "$DIR/kdc.stderr" "$DIR/kadmin.log" "$DIR/krb5lib.log" \
       "$DIR/ready.ccache"
mkdir -p "$DIR/db"

cat > "$DIR/krb5.conf" <<CONF
[libdefaults]
    default_realm = $REALM
    dns_lookup_kdc = false
    dns_lookup_realm = false
    rdns = false
    dns_canonicalize_hostname = false
    udp_preference_limit = 1
    default_ccache_name = FILE:$DIR/default.ccache
    forwardable = true

[realms]
    $REALM = {
        kdc = 127.0.0.1:$PORT
    }

[domain_realm]
    .carousel.test = $REALM
    carousel.test = $REALM

[logging]
    default = FILE:$DIR/krb5lib.log
CONF

cat > "$DIR/kdc.conf" <<CONF
[kdcdefaults]
    kdc_ports = $PORT
    kdc_tcp_ports = $PORT
    kdc_listen = 127.0.0.1:$PORT
    kdc_tcp_listen = 127.0.0.1:$PORT

[realms]
    $REALM = {
        database_name = $DIR/db/principal
        key_stash_file = $DIR/db/stash
        acl_file = $DIR/db/kadm5.acl
        kdc_ports = $PORT
        kdc_tcp_ports = $PORT
        kdc_listen = 127.0.0.1:$PORT
        kdc_tcp_listen = 127.0.0.1:$PORT
        max_life = 10h 0m 0s
        max_renewable_life = 7d 0h 0m 0s
    }

[logging]
    kdc = FILE:$DIR/kdc.log
    admin_server = FILE:$DIR/kadmin.log
    default = FILE:$DIR/kdc.log
CONF
: > "$DIR/db/kadm5.acl"

export KRB5_CONFIG="$DIR/krb5.conf"
export KRB5_KDC_PROFILE="$DIR/kdc.conf"
export KRB5CCNAME="FILE:$DIR/ready.ccache"
unset KRB5_KTNAME KRB5_CLIENT_KTNAME || true

fail() {
    echo "start-kdc.sh: $*" >&2
    for f in kdc.log kdc.stderr kadmin.log setup.log; do
        if [ -s "$DIR/$f" ]; then
            echo "----- $DIR/$f -----" >&2
            cat "$DIR/$f" >&2
        fi
    done
    if [ -f "$DIR/kdc.pid" ]; then
        kill "$(cat "$DIR/kdc.pid")" 2>/dev/null || true
    fi
    exit 1
}

: > "$DIR/setup.log"
kdb5_util create -s -r "$REALM" -P "master-pw-not-secret" >>"$DIR/setup.log" 2>&1 \
    || fail "kdb5_util create failed"

kadm() {
    local out
    out=$(kadmin.local -r "$REALM" -q "$1" 2>&1) || { echo "$out" >>"$DIR/setup.log"; fail "kadmin.local -q '$1' failed"; }
    echo "$out" >>"$DIR/setup.log"
    # kadmin.local exits 0 even when the query itself fails; check its output.
    if echo "$out" | grep -qiE 'error|while |cannot|failed|not found'; then
        fail "kadmin.local -q '$1' reported an error"
    fi
}

kadm "addprinc -pw alice-pw alice"
kadm "addprinc -pw bob-pw bob"
kadm "addprinc -pw carol-pw carol"
kadm "addprinc -randkey HTTP/proxy.carousel.test"
kadm "addprinc -randkey HTTP/other.carousel.test"
kadm "addprinc -randkey rcmd/proxy.carousel.test"
kadm "ktadd -k $DIR/proxy.keytab HTTP/proxy.carousel.test rcmd/proxy.carousel.test"
kadm "ktadd -k $DIR/other.keytab HTTP/other.carousel.test"
chmod 0644 "$DIR/proxy.keytab" "$DIR/other.keytab"

# -n: stay in the foreground (we background it ourselves so $! is krb5kdc's pid).
# All fds redirected so callers capturing our stdout do not block on the KDC.
krb5kdc -n -r "$REALM" </dev/null >"$DIR/kdc.stderr" 2>&1 &
KDC_PID=$!
echo "$KDC_PID" > "$DIR/kdc.pid"

ok=0
for _ in $(seq 1 100); do
    if ! proc_alive "$KDC_PID"; then
        fail "krb5kdc exited during startup"
    fi
    # kinit proves the KDC answers; kvno -k proves the answering KDC is ours
    # (the service ticket must decrypt with the keytab we just exported).
    if echo "alice-pw" | kinit alice >/dev/null 2>&1 \
        && kvno -q -k "$DIR/proxy.keytab" HTTP/proxy.carousel.test >/dev/null 2>&1; then
        ok=1
        break
    fi
    sleep 0.1
done
[ "$ok" = 1 ] || fail "KDC did not become ready on 127.0.0.1:$PORT"
kdestroy >/dev/null 2>&1 || true
rm -f "$DIR/ready.ccache"

echo ready
