#!/usr/bin/env bash
# Headless Chromium fetch of http://127.0.0.2:DPORT/ via carousel at proxy.carousel.test:PPORT,
# authenticating with Negotiate (system libgssapi_krb5) from CCACHE.
# Usage: run-chromium.sh DIR PPORT DPORT [CCACHE]
#   CCACHE defaults to DIR/alice.ccache (run kinit.sh first). Prints the DOM on stdout;
#   Chromium's log (--v=1) goes to stderr only when CHROME_LOG=1.
set -euo pipefail
[ "$#" -ge 3 ] || { echo "usage: $0 DIR PPORT DPORT [CCACHE]" >&2; exit 2; }
DIR=$(cd "$1" && pwd); PPORT=$2; DPORT=$3; CCACHE=${4:-$DIR/alice.ccache}
PROFILE=$(mktemp -d /tmp/carousel-drive-chromium.XXXXXX)
trap 'rm -rf "$PROFILE"' EXIT
LOGFLAGS=()
[ -n "${CHROME_LOG:-}" ] && LOGFLAGS=(--enable-logging=stderr --v=1)
KRB5_CONFIG="$DIR/krb5.conf" KRB5CCNAME="FILE:$CCACHE" timeout 60 /usr/bin/chromium \
  --headless=new --no-sandbox --disable-gpu --no-first-run --user-data-dir="$PROFILE" \
  --proxy-server="http://proxy.carousel.test:$PPORT" \
  --proxy-bypass-list="<-loopback>" \
  --host-resolver-rules="MAP proxy.carousel.test 127.0.0.1" \
  --auth-server-allowlist=proxy.carousel.test \
  "${LOGFLAGS[@]}" \
  --dump-dom "http://127.0.0.2:$DPORT/"
