#!/usr/bin/env bash
# Start a throw-away OpenLDAP slapd for dc=carousel,dc=test, entirely under DIR.
#
# Usage: start-slapd.sh DIR PORT [LDAPS_PORT]
#
# Listens on ldap://127.0.0.1:PORT (StartTLS available) and, if LDAPS_PORT is
# given, ldaps://127.0.0.1:LDAPS_PORT. Prints only "ready" on success.
#
# Produces (all under DIR):
#   slapd.conf, schema/      configuration (regenerated on every start)
#   data/                    mdb database (created once; kept across restarts)
#   ca.pem                   self-signed CA (created once)
#   server.pem, server.key   server cert for ldap.carousel.test, localhost, 127.0.0.1
#   bind.pw                  "svc-pw" (no trailing newline)
#   slapd.pid                written by slapd (stop with: kill "$(cat DIR/slapd.pid)")
#   slapd.log                slapd's log (appended to on each start)
#
# Directory:
#   cn=admin,dc=carousel,dc=test      rootdn, password admin-pw
#   cn=carousel,dc=carousel,dc=test   service account, password svc-pw
#   uid={alice,bob,carol,dave},ou=people,dc=carousel,dc=test   password <name>-pw
#   cn=chat-users,ou=groups,dc=carousel,dc=test   groupOfNames: alice, dave
#   cn=staff,ou=groups,dc=carousel,dc=test        groupOfNames: bob
set -euo pipefail

if [ "$#" -lt 2 ] || [ "$#" -gt 3 ]; then
    echo "usage: $0 DIR PORT [LDAPS_PORT]" >&2
    exit 2
fi
DIR=$1
PORT=$2
LDAPS_PORT=${3:-}
for p in "$PORT" $LDAPS_PORT; do
    case "$p" in ''|*[!0-9]*) echo "$0: bad port '$p'" >&2; exit 2 ;; esac
    [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || { echo "$0: bad port '$p'" >&2; exit 2; }
done
SUFFIX="dc=carousel,dc=test"
SVC_DN="cn=carousel,$SUFFIX"

mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
# The client tools used here must not pick up /etc/ldap/ldap.conf or an ldaprc.
# (LDAPNOINIT=1 would also make them ignore LDAPTLS_CACERT, so it is not used.)
printf '# deliberately empty (see start-slapd.sh)\n' > "$DIR/ldap.conf"
export LDAPCONF="$DIR/ldap.conf" LDAPRC="$DIR/no-such-ldaprc"
unset LDAPBASE LDAPURI LDAPBINDDN LDAPTLS_CERT LDAPTLS_KEY || true

proc_alive() {
    local pid=$1 stat
    [ -n "$pid" ] && [ -r "/proc/$pid/stat" ] || return 1
    stat=$(cat "/proc/$pid/stat" 2>/dev/null) || return 1
    case "$stat" in *") Z "*|*") X "*) return 1 ;; esac
}
slapd_alive() {
    proc_alive "$1" && [ "$(cat "/proc/$1/comm" 2>/dev/null)" = slapd ]
}
port_busy() {
    if command -v ss >/dev/null 2>&1; then
        [ -n "$(ss -H -ltn "sport = :$1" 2>/dev/null)" ]
    else
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
    fi
}

# A slapd from this DIR that was just killed may still be shutting down
# (it removes slapd.pid when done): wait up to 5 s for it.
if [ -f "$DIR/slapd.pid" ]; then
    old_pid=$(cat "$DIR/slapd.pid" 2>/dev/null || true)
    for _ in $(seq 1 50); do
        slapd_alive "$old_pid" || break
        sleep 0.1
    done
    if slapd_alive "$old_pid"; then
        echo "start-slapd.sh: a slapd is already running from $DIR (pid $old_pid)" >&2
        exit 1
    fi
    rm -f "$DIR/slapd.pid"
fi
for p in "$PORT" $LDAPS_PORT; do
    if port_busy "$p"; then
        echo "start-slapd.sh: port $p is already in use" >&2
        exit 1
    fi
done

fail() {
    echo "start-slapd.sh: $*" >&2
    for f in setup.log slapd.log; do
        if [ -s "$DIR/$f" ]; then
            echo "----- $DIR/$f -----" >&2
            tail -n 200 "$DIR/$f" >&2
        fi
    done
    if [ -n "${SLAPD_PID:-}" ]; then
        kill "$SLAPD_PID" 2>/dev/null || true
    fi
    exit 1
}
: > "$DIR/setup.log"

# --- TLS material (created once, kept across restarts) -----------------------
if [ ! -s "$DIR/ca.pem" ] || [ ! -s "$DIR/server.pem" ] || [ ! -s "$DIR/server.key" ]; then
    rm -f "$DIR/ca.pem" "$DIR/ca.key" "$DIR/server.pem" "$DIR/server.key" "$DIR/server.csr" "$DIR/ca.srl"
    cat > "$DIR/tls-ext.cnf" <<CNF
[server_ext]
basicConstraints = critical, CA:false
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:ldap.carousel.test, DNS:localhost, IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
CNF
    {
        openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
            -keyout "$DIR/ca.key" -out "$DIR/ca.pem" -days 3650 -sha256 \
            -subj "/O=Carousel Test/CN=Carousel Test LDAP CA" \
            -addext "basicConstraints=critical,CA:true" \
            -addext "keyUsage=critical,keyCertSign,cRLSign" 2>&1
    } >>"$DIR/setup.log" || fail "creating the CA failed"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -keyout "$DIR/server.key" -out "$DIR/server.csr" \
        -subj "/O=Carousel Test/CN=ldap.carousel.test" >>"$DIR/setup.log" 2>&1 \
        || fail "creating the server key failed"
    openssl x509 -req -in "$DIR/server.csr" -CA "$DIR/ca.pem" -CAkey "$DIR/ca.key" \
        -CAcreateserial -out "$DIR/server.pem" -days 3650 -sha256 \
        -extfile "$DIR/tls-ext.cnf" -extensions server_ext >>"$DIR/setup.log" 2>&1 \
        || fail "signing the server certificate failed"
    rm -f "$DIR/server.csr"
    chmod 0600 "$DIR/ca.key" "$DIR/server.key"
fi

# --- configuration (regenerated every start: ports may differ) ---------------
mkdir -p "$DIR/schema" "$DIR/data"
for s in core cosine inetorgperson; do
    cp /etc/ldap/schema/$s.schema "$DIR/schema/$s.schema"
done
rm -f "$DIR/bind.pw"
(umask 077 && printf '%s' 'svc-pw' > "$DIR/bind.pw")

cat > "$DIR/slapd.conf" <<CONF
include     $DIR/schema/core.schema
include     $DIR/schema/cosine.schema
include     $DIR/schema/inetorgperson.schema

pidfile     $DIR/slapd.pid
argsfile    $DIR/slapd.args

modulepath  /usr/lib/ldap
moduleload  back_mdb

TLSCACertificateFile  $DIR/ca.pem
TLSCertificateFile    $DIR/server.pem
TLSCertificateKeyFile $DIR/server.key

# Root DSE and schema readable by anyone (StartTLS, supportedExtension, ...).
access to dn.base="" by * read
access to dn.base="cn=Subschema" by * read

database    mdb
maxsize     104857600
suffix      "$SUFFIX"
rootdn      "cn=admin,$SUFFIX"
rootpw      admin-pw
directory   $DIR/data
index       objectClass eq
index       uid,cn eq
index       member eq

access to attrs=userPassword
    by self write
    by anonymous auth
    by * none
access to *
    by dn.exact="$SVC_DN" read
    by users read
    by * none
CONF

# --- database (created once; kept across restarts) ----------------------------
if [ ! -s "$DIR/data/data.mdb" ]; then
    rm -rf "$DIR/data"
    mkdir -p "$DIR/data"
    hash() { slappasswd -h '{SSHA}' -s "$1"; }
    {
        cat <<LDIF
dn: $SUFFIX
objectClass: top
objectClass: dcObject
objectClass: organization
o: Carousel Test
dc: carousel

dn: ou=people,$SUFFIX
objectClass: organizationalUnit
ou: people

dn: ou=groups,$SUFFIX
objectClass: organizationalUnit
ou: groups

dn: $SVC_DN
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: carousel
description: carousel proxy service account
userPassword: $(hash svc-pw)

LDIF
        for u in alice bob carol dave; do
            cat <<LDIF
dn: uid=$u,ou=people,$SUFFIX
objectClass: inetOrgPerson
uid: $u
cn: $u
sn: $u
mail: $u@carousel.test
userPassword: $(hash "$u-pw")

LDIF
        done
        cat <<LDIF
dn: cn=chat-users,ou=groups,$SUFFIX
objectClass: groupOfNames
cn: chat-users
member: uid=alice,ou=people,$SUFFIX
member: uid=dave,ou=people,$SUFFIX

dn: cn=staff,ou=groups,$SUFFIX
objectClass: groupOfNames
cn: staff
member: uid=bob,ou=people,$SUFFIX
LDIF
    } > "$DIR/init.ldif"
    slapadd -q -f "$DIR/slapd.conf" -l "$DIR/init.ldif" >>"$DIR/setup.log" 2>&1 \
        || fail "slapadd failed"
fi

# --- start --------------------------------------------------------------------
URLS="ldap://127.0.0.1:$PORT/"
if [ -n "$LDAPS_PORT" ]; then
    URLS="$URLS ldaps://127.0.0.1:$LDAPS_PORT/"
fi
echo "===== start $(date '+%F %T') urls: $URLS =====" >>"$DIR/slapd.log"
# -d keeps slapd in the foreground (logging to stderr); we background it so
# $! is slapd's pid. All fds redirected so a caller capturing our stdout is
# not held open by slapd. Runs as the invoking user (root): no -u/-g.
slapd -d 256 -f "$DIR/slapd.conf" -h "$URLS" </dev/null >>"$DIR/slapd.log" 2>&1 &
SLAPD_PID=$!

ok=0
for _ in $(seq 1 100); do
    proc_alive "$SLAPD_PID" || fail "slapd exited during startup"
    if ldapsearch -x -LLL -o nettimeout=2 -H "ldap://127.0.0.1:$PORT" -D "$SVC_DN" -w svc-pw \
        -b "$SUFFIX" uid=alice dn 2>/dev/null | grep -q '^dn: uid=alice,'; then
        ok=1
        break
    fi
    sleep 0.1
done
[ "$ok" = 1 ] || fail "slapd did not become ready on 127.0.0.1:$PORT"

# slapd writes its pid file itself; make sure it is there before we return.
for _ in $(seq 1 50); do
    [ -s "$DIR/slapd.pid" ] && break
    sleep 0.1
done
[ "$(cat "$DIR/slapd.pid" 2>/dev/null)" = "$SLAPD_PID" ] || fail "slapd.pid missing or wrong"

# TLS must work too (StartTLS on the plain port, and ldaps if asked for).
export LDAPTLS_CACERT="$DIR/ca.pem" LDAPTLS_REQCERT=demand
ldapsearch -x -ZZ -LLL -o nettimeout=2 -H "ldap://127.0.0.1:$PORT" -D "$SVC_DN" -w svc-pw \
    -b "$SUFFIX" -s base dn >>"$DIR/setup.log" 2>&1 || fail "StartTLS check failed"
if [ -n "$LDAPS_PORT" ]; then
    ldapsearch -x -LLL -o nettimeout=2 -H "ldaps://127.0.0.1:$LDAPS_PORT" -D "$SVC_DN" -w svc-pw \
        -b "$SUFFIX" -s base dn >>"$DIR/setup.log" 2>&1 || fail "ldaps check failed"
fi

echo ready
