#!/usr/bin/env bash
# Fetch http://127.0.0.2:DPORT/ via carousel at proxy.carousel.test:PPORT using JDK Negotiate.
# Usage: run-java.sh DIR PPORT DPORT [CCACHE]
#   DIR: directory given to start-kdc.sh; CCACHE defaults to DIR/alice.ccache (run kinit.sh first).
#   proxy.carousel.test is resolved to 127.0.0.1 by a private hosts file (jdk.net.hosts.file),
#   so /etc/hosts need not change. Env URL=... overrides the target (e.g. https://127.0.0.2:DPORT/
#   to exercise CONNECT); JAVA_DEBUG=1 turns on krb5/jgss debug output.
set -euo pipefail
[ "$#" -ge 3 ] || { echo "usage: $0 DIR PPORT DPORT [CCACHE]" >&2; exit 2; }
DIR=$(cd "$1" && pwd); PPORT=$2; DPORT=$3; CCACHE=${4:-$DIR/alice.ccache}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/carousel-drive-java.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
sed "s|@CCACHE@|$CCACHE|" "$HERE/jaas.conf.template" > "$WORK/jaas.conf"
printf '127.0.0.1 proxy.carousel.test\n' > "$WORK/hosts"
javac -d "$WORK" "$HERE/Drive.java"
exec java -cp "$WORK" \
  -Djava.security.krb5.conf="$DIR/krb5.conf" \
  -Djava.security.auth.login.config="$WORK/jaas.conf" \
  -Djavax.security.auth.useSubjectCredsOnly=false \
  -Djdk.http.auth.proxying.disabledSchemes= \
  -Djdk.http.auth.tunneling.disabledSchemes= \
  -Djdk.net.hosts.file="$WORK/hosts" \
  ${JAVA_DEBUG:+-Dsun.security.krb5.debug=true -Dsun.security.jgss.debug=true} \
  Drive proxy.carousel.test "$PPORT" "${URL:-http://127.0.0.2:$DPORT/}"
