#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test carousel:
# cmake (Pingora's zlib-ng build needs it), curl (the tests' real client), prometheus
# (a real Prometheus and promtool for the metrics tests), dig and dnsmasq (the DNS responder's
# real resolvers: dnsmasq-base is the binary without a service that would start on install),
# haproxy (the load balancer in front of two replicas), chromium (the status page, headless), squid
# (real parent proxies; openssl makes their test password), MIT Kerberos (krb5-kdc, kadmin.local,
# kinit; libkrb5-dev and libclang-dev build the GSSAPI binding), OpenLDAP (slapd, ldap-utils) and
# python3-gssapi (the identity tests' KDC, directory and SOCKS5 GSS-API client).
# Extra tools can be named as arguments
# ("tool" or "tool:package"). Idempotent: does nothing when all are present.
set -euo pipefail
need=()
for spec in cmake curl prometheus promtool:prometheus dig:bind9-dnsutils dnsmasq:dnsmasq-base unshare:util-linux haproxy chromium squid openssl \
    krb5kdc:krb5-kdc kadmin.local:krb5-admin-server kinit:krb5-user krb5-config:libkrb5-dev \
    slapd ldapadd:ldap-utils "$@"; do
  tool=${spec%%:*}
  pkg=${spec#*:}
  command -v "$tool" >/dev/null 2>&1 || need+=("$pkg")
done
# Libraries, not tools: looked for by their files.
compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null || need+=(libclang-dev)
/usr/bin/python3 -c 'import gssapi' 2>/dev/null || need+=(python3-gssapi)
mapfile -t need < <(printf '%s\n' "${need[@]}" | sort -u | sed '/^$/d')
[ ${#need[@]} -eq 0 ] && exit 0
echo "ensure-deps: installing ${need[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# Packages such as prometheus would start their service on install (Prometheus on :9090, the
# admin port carousel uses by default); tests start their own, so services stay down.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  own_policy=1
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
[ "$own_policy" = 1 ] && $SUDO rm -f "$policy"
exit 0
