#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test carousel:
# cmake (Pingora's zlib-ng build needs it) and curl (the tests' real client).
# Extra Debian packages can be named as arguments. Idempotent: does nothing when all are present.
set -euo pipefail
need=()
for tool in cmake curl "$@"; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
[ ${#need[@]} -eq 0 ] && exit 0
echo "ensure-deps: installing ${need[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
