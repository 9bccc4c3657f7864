#!/usr/bin/env bash
# deploy/check.sh: checks every deployment file under deploy/ without a cluster, a Docker
# engine or a running systemd. Run it from the repository root:
#
#   deploy/check.sh
#
# Works on a fresh Debian 12 machine as root: it installs what it lacks (Debian packages
# systemd, python3, python3-yaml, python3-venv, shellcheck; promtool from Debian's `prometheus`
# package; kubernetes-validate from PyPI into a private venv). It runs every check, prints
# each one's result, and exits 1 if any failed, naming them at the end.
#
# With CAROUSEL_BIN=path/to/carousel (`make test` passes target/debug/carousel) it also
# validates the three example configs (and the systemd one with its [responder] example enabled)
# with `carousel check`, runs the binary on loopback ports (the DNS responder, admin endpoints,
# /metrics, the image's HEALTHCHECK, a graceful upgrade, SIGTERM) and, as root, runs the systemd
# unit under a real systemd in a throwaway container (start, all client modes, the responder on
# port 53, reload, a rejected reload, carousel-upgrade under client load, stop).
set -euo pipefail

if [ ! -f deploy/check.sh ] || [ ! -d deploy/kubernetes ]; then
    echo "deploy/check.sh: run me from the repository root" >&2
    exit 2
fi

# Tools installed by this script are cached here (promtool, the kubernetes-validate venv).
if [ "$(id -u)" -eq 0 ]; then
    CACHE=/var/cache/carousel-deploy-check
else
    CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/carousel-deploy-check
fi
KUBERNETES_VALIDATE_VERSION=1.37.0
# Oldest and newest Kubernetes minor versions the manifests are validated against.
KUBERNETES_VERSIONS="1.28.0 1.37.0"
if [ -n "${CAROUSEL_BIN:-}" ]; then
    CAROUSEL_BIN=$(realpath "$CAROUSEL_BIN")
    [ -x "$CAROUSEL_BIN" ] || { echo "deploy/check.sh: CAROUSEL_BIN $CAROUSEL_BIN is not executable" >&2; exit 2; }
fi
PY=/usr/bin/python3 # Debian's python: python3-yaml belongs to it, not to a pyenv or venv one
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------ installing what is missing

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        $SUDO apt-get update -qq
        apt_updated=1
    fi
}
apt_install() {
    apt_update_once
    echo "-- installing Debian packages: $*"
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

ensure_tools() {
    local need=()
    [ -x "$PY" ] || need+=(python3)
    { [ -x "$PY" ] && "$PY" -c 'import yaml' 2>/dev/null; } || need+=(python3-yaml)
    { [ -x "$PY" ] && "$PY" -c 'import ensurepip, venv' 2>/dev/null; } || need+=(python3-venv)
    command -v systemd-analyze >/dev/null || need+=(systemd)
    command -v shellcheck >/dev/null || need+=(shellcheck)
    if [ ${#need[@]} -gt 0 ]; then apt_install "${need[@]}"; fi

    # promtool: from PATH, else extracted from Debian's `prometheus` package. Only the promtool
    # binary is unpacked (it needs libc alone): installing the package would also create,
    # enable and, where systemd runs, start a Prometheus server on :9090, the very port of
    # carousel's admin listener.
    if command -v promtool >/dev/null; then
        PROMTOOL=$(command -v promtool)
    else
        PROMTOOL=$CACHE/bin/promtool
        if [ ! -x "$PROMTOOL" ]; then
            echo "-- fetching promtool from Debian's prometheus package"
            apt_update_once
            rm -rf "$CACHE/deb" && mkdir -p "$CACHE/deb" "$CACHE/bin"
            # Sandbox user root: the download goes to a root-only directory.
            (cd "$CACHE/deb" && apt-get download -q -o APT::Sandbox::User=root prometheus >/dev/null)
            dpkg-deb -x "$CACHE"/deb/prometheus_*.deb "$CACHE/deb/root"
            install -m 0755 "$CACHE/deb/root/usr/bin/promtool" "$PROMTOOL"
            rm -rf "$CACHE/deb"
        fi
    fi

    # kubernetes-validate: the Kubernetes OpenAPI schemas, offline, in a private venv.
    KUBERNETES_VALIDATE=$CACHE/venv/bin/kubernetes-validate
    if ! [ -x "$KUBERNETES_VALIDATE" ] ||
        [ "$("$CACHE/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null)" != "$KUBERNETES_VALIDATE_VERSION" ]; then
        echo "-- installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $CACHE/venv"
        rm -rf "$CACHE/venv"
        mkdir -p "$CACHE"
        "$PY" -m venv "$CACHE/venv"
        "$CACHE/venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
    fi
}

# ------------------------------------------------------------------ the checks
# Each check runs in a subshell with `set -e` in force (it is not called from an `if`, where
# bash would ignore -e), so the first failing command fails that check and only that check.

check_shell_scripts() {
    bash -n deploy/check.sh
    bash -n deploy/systemd/carousel-upgrade.sh
    bash -n deploy/tools/systemd-in-container.sh
    shellcheck deploy/check.sh deploy/systemd/carousel-upgrade.sh deploy/tools/systemd-in-container.sh
}

check_prometheus_rules() {
    "$PROMTOOL" check rules deploy/prometheus/carousel-alerts.yml
}

check_prometheus_rule_tests() {
    "$PROMTOOL" test rules deploy/prometheus/carousel-alerts.test.yml
    "$PY" deploy/tools/check_manifests.py alert-tests
}

check_prometheus_config() {
    # rule_files are resolved relative to prometheus.yml, so this also loads the alerts.
    "$PROMTOOL" check config deploy/prometheus/prometheus.yml
}

check_metric_names() {
    "$PY" deploy/tools/check_manifests.py metrics
}

check_grafana_dashboard() {
    # JSON, variables, panels; then every panel query goes through promtool's PromQL parser.
    "$PY" deploy/tools/check_manifests.py dashboard "$WORK/dashboard-rules.yml"
    "$PROMTOOL" check rules "$WORK/dashboard-rules.yml" >/dev/null
    echo "  dashboard queries: valid PromQL"
}

# systemd-analyze verify checks the unit the way systemd loads it, but also insists that every
# ExecStart=/ExecStartPre=/ExecReload= binary exists, and /usr/local/bin/carousel does not exist
# on a CI machine. Rather than filtering its messages, the unit is verified inside a scratch
# root (--root): a copy of the system's units (for the targets it depends on), the unit in
# /etc/systemd/system, the graceful-upgrade runtime drop-in in /run/systemd/system, and a stub
# executable at every absolute Exec path that is either carousel's binary or exists on this
# machine (any other path fails here: systemd-analyze only looks at the first command of each
# Exec list). A typo in a path, a key or a value is still reported. systemd-analyze exits 0 on
# warnings such as "Unknown key" or unparsable values, so any line that names the unit counts
# as a failure too.
check_systemd_unit() {
    local root=$WORK/systemd-root unit=deploy/systemd/carousel.service out path missing=0
    mkdir -p "$root/etc/systemd/system" "$root/run/systemd/system/carousel.service.d" "$root/usr/lib/systemd"
    cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/"
    cp "$unit" "$root/etc/systemd/system/carousel.service"
    bash deploy/systemd/carousel-upgrade.sh --print-dropin >"$root/run/systemd/system/carousel.service.d/zz-carousel-upgrade.conf"
    # Absolute paths of the Exec*= commands (after systemd's prefixes @-:+!) in unit and drop-in.
    while read -r path; do
        if [ "$path" != /usr/local/bin/carousel ] && ! [ -x "$path" ]; then
            # systemd-analyze only looks at the first command of each Exec list: check all here.
            echo "  $path (an Exec*= command) is not an executable on this machine"
            missing=1
            continue
        fi
        mkdir -p "$root$(dirname "$path")"
        printf '#!/bin/sh\nexit 0\n' >"$root$path"
        chmod 0755 "$root$path"
    done < <(sed -n -E 's/^Exec[A-Za-z]*=[-@:+!]*(\/[^ ]+).*/\1/p' \
        "$root/etc/systemd/system/carousel.service" \
        "$root/run/systemd/system/carousel.service.d/zz-carousel-upgrade.conf" | sort -u)
    [ "$missing" -eq 0 ] || return 1

    out=$(systemd-analyze verify --man=no --generators=no --recursive-errors=no --root="$root" \
        "$root/etc/systemd/system/carousel.service" 2>&1) || {
        echo "$out"
        return 1
    }
    if grep -i 'carousel' <<<"$out"; then
        echo "  systemd-analyze verify reported the problems above"
        return 1
    fi
    # Hardening must not regress: exposure score (0-100 internally; the 0-10 display x 10).
    systemd-analyze security --offline=yes --man=no --root="$root" --threshold=25 \
        "$root/etc/systemd/system/carousel.service" >"$WORK/security.txt" 2>&1 || {
        grep -E 'Overall exposure|✗' "$WORK/security.txt"
        echo "  exposure level above 2.5"
        return 1
    }
    grep 'Overall exposure' "$WORK/security.txt"
}

check_configs() {
    "$PY" deploy/tools/check_manifests.py configs
}

check_kubernetes_manifests() {
    # Every document: YAML (duplicate keys rejected), apiVersion/kind/metadata.name, and the
    # cross-references (selectors, ports, probes, volumes, checksum, shutdown budget).
    "$PY" deploy/tools/check_manifests.py kubernetes
    # Schemas of the core kinds (strict: unknown fields are errors). ServiceMonitor (a CRD) and
    # Kustomization have no schema there and are only warned about.
    local version
    for version in $KUBERNETES_VERSIONS; do
        "$KUBERNETES_VALIDATE" --strict --quiet --no-warn -k "$version" deploy/kubernetes/*.yaml
        echo "  schemas of Kubernetes $version: ok"
    done
}

check_dockerfile() {
    # No Docker engine here: the image is not built. Checked instead: COPY sources exist and
    # survive the ignore file, --locked, EXPOSE, numeric USER, and the HEALTHCHECK command run
    # for real against a local HTTP server.
    "$PY" deploy/tools/check_manifests.py docker
}

check_configs_with_carousel() {
    # The three configs, and the systemd one with its commented [responder] example enabled.
    "$PY" deploy/tools/check_manifests.py configmap-toml "$WORK/configmap.toml"
    "$PY" deploy/tools/check_manifests.py systemd-toml-examples "$WORK/systemd-examples.toml"
    local f out
    for f in deploy/systemd/carousel.toml deploy/docker/carousel.toml "$WORK/configmap.toml" \
        "$WORK/systemd-examples.toml"; do
        # Not inside echo's arguments: a failing `carousel check` must fail the check.
        out=$("$CAROUSEL_BIN" check -c "$f")
        echo "  $f: $out"
    done
}

check_live_carousel() {
    # The real binary on free loopback ports, with a cluster whose member is down and the DNS
    # responder: its answers (UDP, TCP, REFUSED), /healthz /readyz /status /proxy.pac /wpad.dat,
    # /metrics (promtool's linter; exactly the carousel_* families known here), the image's
    # HEALTHCHECK command, a graceful upgrade through carousel-upgrade.sh --in-unit while a
    # client keeps connecting (none may be refused), then SIGTERM (/readyz 503 while draining).
    "$PY" deploy/tools/check_manifests.py live "$CAROUSEL_BIN" "$PROMTOOL" "$WORK/live"
}

# The unit under a real systemd: a throwaway container (systemd-nspawn, private network, root
# filesystem = an overlay of this machine's / on a tmpfs, so nothing here is changed) booted to
# basic.target, deploy/systemd/* installed as deploy/README.md says, then
# deploy/tools/systemd-in-container.sh. Skipped (not failed) where no container can boot.
check_systemd_live() {
    local base root nspawn leader state="" rc=0
    if ! command -v systemd-nspawn >/dev/null || ! command -v curl >/dev/null; then
        apt_install systemd-container curl
    fi
    base=$(mktemp -d /tmp/carousel-nspawn.XXXXXX)
    root=$base/root
    mount -t tmpfs -o size=2g,mode=0755 carousel-check "$base"
    mkdir -p "$base/upper" "$base/work" "$root"
    mount -t overlay carousel-check -o "lowerdir=/,upperdir=$base/upper,workdir=$base/work" "$root"
    # shellcheck disable=SC2064 # expand now
    trap "cleanup_container '$base'" EXIT

    install -m 0755 "$CAROUSEL_BIN" "$root/usr/local/bin/carousel"
    install -m 0755 "$CAROUSEL_BIN" "$root/root/carousel-new"
    install -m 0755 deploy/systemd/carousel-upgrade.sh "$root/usr/local/sbin/carousel-upgrade"
    install -D -m 0644 deploy/systemd/carousel.sysusers "$root/etc/sysusers.d/carousel.conf"
    systemd-sysusers --root="$root" "$root/etc/sysusers.d/carousel.conf" >/dev/null 2>&1
    install -d -m 0750 -g "$(chroot "$root" id -g carousel)" "$root/etc/carousel"
    install -m 0640 -g "$(chroot "$root" id -g carousel)" deploy/systemd/carousel.toml "$root/etc/carousel/carousel.toml"
    install -m 0644 deploy/systemd/carousel.service "$root/etc/systemd/system/carousel.service"
    install -m 0755 deploy/tools/systemd-in-container.sh "$root/root/systemd-in-container.sh"
    rm -rf "$root/run/carousel" "$root/run/carousel-upgrade" "$root/run/systemd/system/carousel.service.d"

    systemd-nspawn --quiet --directory="$root" --private-network --register=no --keep-unit \
        --console=read-only --boot -- --unit=basic.target >"$base/console.log" 2>&1 &
    nspawn=$!
    echo "$nspawn" >"$base/nspawn.pid"
    for _ in $(seq 1 150); do
        leader=$(pgrep -P "$nspawn" | head -n1 || true)
        if [ -n "$leader" ]; then
            state=$(nsenter -t "$leader" -a systemctl is-system-running 2>/dev/null || true)
            case $state in running | degraded) break ;; esac
        fi
        kill -0 "$nspawn" 2>/dev/null || break
        sleep 0.2
    done
    case $state in
    running | degraded) ;;
    *)
        echo "  skipped: no systemd container could boot here (state '${state:-none}'):"
        tail -n 5 "$base/console.log" | sed 's/^/    /'
        return 0
        ;;
    esac
    nsenter -t "$leader" -a /bin/bash /root/systemd-in-container.sh || rc=$?
    return "$rc"
}

cleanup_container() {
    local base=$1 pid
    pid=$(cat "$base/nspawn.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true # nspawn powers the container off
        for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    umount "$base/root" 2>/dev/null || umount -l "$base/root" 2>/dev/null || true
    umount "$base" 2>/dev/null || umount -l "$base" 2>/dev/null || true
    rmdir "$base" 2>/dev/null || true
}

# ------------------------------------------------------------------ running them

failed=()
passed=0
run_check() {
    local name=$1 rc
    echo "== $name"
    set +e
    (
        set -e
        "$name"
    )
    rc=$?
    set -e
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
    else
        echo "!! FAILED: $name (exit $rc)"
        failed+=("$name")
    fi
}

ensure_tools
run_check check_shell_scripts
run_check check_prometheus_rules
run_check check_prometheus_rule_tests
run_check check_prometheus_config
run_check check_metric_names
run_check check_grafana_dashboard
run_check check_systemd_unit
run_check check_configs
run_check check_kubernetes_manifests
run_check check_dockerfile
skipped=0
if [ -n "${CAROUSEL_BIN:-}" ]; then
    run_check check_configs_with_carousel
    run_check check_live_carousel
    if [ "$(id -u)" -eq 0 ]; then
        run_check check_systemd_live
    else
        skipped=1
        echo "== check_systemd_live: skipped (needs root: mounts an overlay, boots a container)"
    fi
else
    skipped=3
    echo "== check_configs_with_carousel, check_live_carousel, check_systemd_live: skipped (set CAROUSEL_BIN=path/to/carousel)"
fi
echo "== not checked here: building the Docker image (no Docker engine), applying the manifests (no cluster)"

if [ ${#failed[@]} -gt 0 ]; then
    echo "deploy/check.sh FAILED: ${failed[*]}"
fi
# The plain closing line CI reads.
echo "deploy: $passed passed, ${#failed[@]} failed, $skipped skipped"
[ ${#failed[@]} -eq 0 ]
