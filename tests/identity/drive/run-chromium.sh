#!/usr/bin/env bash
# Headless Chromium fetch of http://127.0.0.2:DPORT/ via carousel at proxy.carousel.test:PPORT,
# authenticating with Negotiate (system libgssapi_krb5) from CCACHE.
# Usage: run-chromium.sh DIR PPORT DPORT [CCACHE]
#   CCACHE defaults to DIR/alice.ccache (run kinit.sh first). Prints the DOM on stdout;
#   Chromium's log (--v=1) goes to stderr only when CHROME_LOG=1.
#   Env URL=... overrides the target.
#
# Name of the proxy: Chromium builds the SPN from the *canonical* name of the proxy host
# (CNAME lookup through its resolver). With only --host-resolver-rules="MAP proxy.carousel.test
# 127.0.0.1" the canonical name comes back as "127.0.0.1", so it asks the KDC for
# HTTP/127.0.0.1@CAROUSEL.TEST ("Server not found in Kerberos database") and never sends a
# token. The old --disable-auth-negotiate-cname-lookup switch is gone (Chromium 156 knows only
# the policy). So one of these is needed:
#   a) /etc/hosts has "127.0.0.1 proxy.carousel.test" (then no MAP rule is used), or
#   b) a managed policy {"DisableAuthNegotiateCnameLookup": true} in
#      /etc/chromium/policies/managed/*.json (then the MAP rule is used).
set -euo pipefail
[ "$#" -ge 3 ] || { echo "usage: $0 DIR PPORT DPORT [CCACHE]" >&2; exit 2; }
DIR=$(cd "$1" && pwd); PPORT=$2; DPORT=$3; CCACHE=${4:-$DIR/alice.ccache}
PROFILE=$(mktemp -d /tmp/carousel-drive-chromium.XXXXXX)
trap 'rm -rf "$PROFILE"' EXIT
if getent hosts proxy.carousel.test | grep -q '^127\.'; then
    MAPFLAGS=()
elif grep -qs '"DisableAuthNegotiateCnameLookup": *true' /etc/chromium/policies/managed/*.json; then
    MAPFLAGS=(--host-resolver-rules="MAP proxy.carousel.test 127.0.0.1")
else
    echo "$0: proxy.carousel.test not in /etc/hosts and no DisableAuthNegotiateCnameLookup policy; see header" >&2
    exit 1
fi
LOGFLAGS=()
[ -n "${CHROME_LOG:-}" ] && LOGFLAGS=(--enable-logging=stderr --v=1)
KRB5_CONFIG="$DIR/krb5.conf" KRB5CCNAME="FILE:$CCACHE" timeout 60 /usr/bin/chromium \
  --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir="$PROFILE" \
  --proxy-server="http://proxy.carousel.test:$PPORT" \
  --proxy-bypass-list="<-loopback>" \
  "${MAPFLAGS[@]}" \
  --auth-server-allowlist=proxy.carousel.test \
  "${LOGFLAGS[@]}" \
  --dump-dom "${URL:-http://127.0.0.2:$DPORT/}"
