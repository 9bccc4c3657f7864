#!/usr/bin/env bash
# carousel-upgrade: graceful binary upgrade of carousel under systemd, without refusing a
# single connection. Install as /usr/local/sbin/carousel-upgrade (mode 0755).
#
#   carousel-upgrade [NEW_BINARY]
#
# With NEW_BINARY it first installs that file as the unit's binary (/usr/local/bin/carousel,
# the old one kept as carousel.prev); without it, it upgrades to whatever binary is already
# installed there (copy it in yourself first, with an atomic rename).
#
# How it works, and why it is done this way
# -----------------------------------------
# Pingora's upgrade: a new process started with `carousel run -u` listens on server.upgrade_sock;
# the old process gets SIGQUIT, sends it its listening sockets, keeps serving its in-flight
# connections for 5 s + server.graceful_shutdown_timeout_seconds, then exits. No listener is
# ever closed, so no client sees a refused connection.
#
# Under systemd the new process must be started *by the unit*: only then does it run with the
# unit's user, sandbox, limits and cgroup. A process started from a shell would escape the
# hardening, and systemd would either not supervise it or kill it as a stray. The one command
# systemd runs inside a running unit on request is ExecReload=, and that is SIGHUP (hot config
# reload) in carousel.service. So this script, run as root:
#   1. installs a *runtime* drop-in (/run/systemd/system/carousel.service.d/, gone at reboot)
#      whose ExecReload= runs this script again in `--in-unit` mode, then `systemctl
#      daemon-reload` and `systemctl reload carousel`;
#   2. inside the unit (as user carousel, sandboxed), the drop-in runs the new binary's
#      `carousel check` on the config, then `--in-unit` starts `carousel run -u`, waits for its
#      upgrade socket, sends SIGQUIT to the old main process, waits until the new process holds
#      every listening socket the old one had, and writes the new PID into the unit's PIDFile
#      (/run/carousel/carousel.pid);
#   3. removes the drop-in again (daemon-reload), so `systemctl reload` is plain SIGHUP again.
# At the end of the reload job systemd re-reads PIDFile= and adopts the new process as the
# service's main PID (it accepts the PID because the process is in the unit's cgroup; it would
# do the same when the old main process exits). The old process keeps draining in the cgroup as
# an ordinary process and exits on its own; `systemctl stop` sends it SIGTERM as well.
# Tested with systemd 252 in a container: MainPID switches, no client connection fails.
#
# Failure modes: if the new process dies or never opens its upgrade socket, the old process is
# not signalled and keeps serving; the reload job fails, the previous binary is put back (when
# NEW_BINARY was given) and this script exits 1. If the new process dies after SIGQUIT, the old
# one drains and exits, and Restart=always starts the service fresh (a short outage): check
# `journalctl -u carousel`.
#
# Other modes: `--in-unit OLD_PID PID_FILE BINARY` (called by the drop-in, never by hand) and
# `--print-dropin` (prints the drop-in; deploy/check.sh verifies the unit with it applied).
set -euo pipefail

# The unit's binary (its ExecStart=) and unit name, if yours differ.
UNIT=${CAROUSEL_UNIT:-carousel.service}
BIN=${CAROUSEL_INSTALLED_BIN:-/usr/local/bin/carousel}
# Where the root-owned copy of this script lives during an upgrade: readable inside the
# sandbox (ProtectHome= hides /root and /home, where the admin may have run it from).
STAGE_DIR=/run/carousel-upgrade
DROPIN_NAME=zz-carousel-upgrade.conf

die() {
    echo "carousel-upgrade: $*" >&2
    exit 1
}

log() {
    echo "carousel-upgrade: $*" >&2
}

# The drop-in that turns the next `systemctl reload` into an upgrade.
print_dropin() {
    local script=$1 pid_file=$2 bin=$3
    cat <<EOF
# Written by carousel-upgrade for one graceful upgrade and removed right after it.
[Service]
ExecReload=
ExecReload=$bin check -c \${CAROUSEL_CONFIG}
ExecReload=/bin/bash $script --in-unit \$MAINPID $pid_file $bin
EOF
}

# The string value of a top-level-looking `key = "value"` line of the config (carousel.toml
# keeps server.pid_file / server.upgrade_sock on one line each); empty if absent.
toml_string() {
    local key=$1 file=$2
    sed -n -E "s/^[[:space:]]*${key}[[:space:]]*=[[:space:]]*\"([^\"]*)\".*/\\1/p" "$file" | head -n1
}

# How many TCP listening sockets process $1 holds.
count_listeners() {
    local pid=$1 n=0 link ino fd
    local -A listening=()
    while read -r ino; do
        listening[$ino]=1
    done < <(awk 'FNR > 1 && $4 == "0A" { print $10 }' /proc/net/tcp /proc/net/tcp6 2>/dev/null)
    for fd in /proc/"$pid"/fd/*; do
        link=$(readlink "$fd" 2>/dev/null) || continue
        case $link in
        socket:\[*\])
            ino=${link#socket:[}
            ino=${ino%]}
            if [[ -n ${listening[$ino]:-} ]]; then n=$((n + 1)); fi
            ;;
        esac
    done
    echo "$n"
}

alive() {
    kill -0 "$1" 2>/dev/null
}

# Runs inside the unit (ExecReload= of the drop-in), as the service user, in its sandbox.
in_unit() {
    local old=$1 pid_file=$2 bin=$3
    local config=${CAROUSEL_CONFIG:-/etc/carousel/carousel.toml}
    local sock before new have=0
    sock=$(toml_string upgrade_sock "$config")
    sock=${sock:-/tmp/carousel_upgrade.sock} # carousel's default (private /tmp of the unit)

    alive "$old" || die "old main process $old is not running"
    before=$(count_listeners "$old")
    [ "$before" -gt 0 ] || die "old process $old holds no listening socket; nothing to hand over"
    log "old process $old holds $before listening socket(s); starting $bin run -u"

    rm -f -- "$sock"
    # setsid: the new process leaves the reload job's session; $! is carousel's own PID
    # (setsid execs in place because a background child of a script is no group leader).
    setsid "$bin" run -u -c "$config" </dev/null &
    new=$!

    # Pingora's new process binds the upgrade socket, then waits about 6 s for the sockets.
    for _ in $(seq 1 50); do
        [ -S "$sock" ] && break
        alive "$new" || die "new process exited before it opened $sock (see the journal); the old process keeps serving"
        sleep 0.1
    done
    if ! [ -S "$sock" ]; then
        kill -TERM "$new" 2>/dev/null || true
        die "new process did not open $sock within 5 s; stopped it; the old process keeps serving"
    fi

    log "sending SIGQUIT to $old (hand over the listening sockets)"
    kill -QUIT "$old"

    for _ in $(seq 1 150); do
        alive "$new" || die "new process $new died during the handover; the old process drains and exits, then systemd restarts the unit"
        have=$(count_listeners "$new")
        if [ "$have" -ge "$before" ]; then
            printf '%s\n' "$new" >"$pid_file.tmp"
            mv -f -- "$pid_file.tmp" "$pid_file"
            log "new process $new took over $have listening socket(s); $old drains and exits; systemd adopts $new as main PID (PID file $pid_file)"
            return 0
        fi
        sleep 0.1
    done
    kill -TERM "$new" 2>/dev/null || true
    die "new process $new held $have of $before listening sockets after 15 s; stopped it; the old process drains and exits, then systemd restarts the unit"
}

admin() {
    local new_bin=${1:-}
    [ "$(id -u)" -eq 0 ] || die "run as root (it installs a runtime drop-in and reloads $UNIT)"
    command -v systemctl >/dev/null || die "systemctl not found"
    systemctl is-active --quiet "$UNIT" || die "$UNIT is not running: start it instead (systemctl start $UNIT)"

    local main_pid pid_file
    main_pid=$(systemctl show -p MainPID --value "$UNIT")
    pid_file=$(systemctl show -p PIDFile --value "$UNIT")
    [ -n "$pid_file" ] || die "$UNIT has no PIDFile=; systemd could not follow the new process (use deploy/systemd/carousel.service)"
    [ "$main_pid" -gt 0 ] || die "$UNIT has no main PID"

    if [ -n "$new_bin" ]; then
        [ -x "$new_bin" ] || die "$new_bin is not an executable file"
        "$new_bin" --version >/dev/null || die "$new_bin --version failed: not a carousel binary for this machine?"
        install -m 0755 -- "$new_bin" "$BIN.new"
        if [ -e "$BIN" ]; then cp -p -- "$BIN" "$BIN.prev"; fi
        mv -f -- "$BIN.new" "$BIN"
        log "installed $new_bin as $BIN (previous binary: $BIN.prev)"
    fi

    local dropin_dir=/run/systemd/system/$UNIT.d
    local dropin=$dropin_dir/$DROPIN_NAME
    local staged=$STAGE_DIR/carousel-upgrade.sh
    install -d -m 0755 "$STAGE_DIR" "$dropin_dir"
    install -m 0755 -- "$0" "$staged"
    print_dropin "$staged" "$pid_file" "$BIN" >"$dropin"
    # shellcheck disable=SC2064 # expand now: the paths are fixed
    trap "rm -f -- '$dropin' '$staged'; rmdir -- '$dropin_dir' '$STAGE_DIR' 2>/dev/null; systemctl daemon-reload" EXIT
    systemctl daemon-reload

    log "upgrading $UNIT (main PID $main_pid) via systemctl reload"
    if ! systemctl reload "$UNIT"; then
        if [ -n "$new_bin" ] && [ -e "$BIN.prev" ]; then
            mv -f -- "$BIN.prev" "$BIN"
            log "restored the previous binary as $BIN"
        fi
        die "upgrade failed: journalctl -u $UNIT -n 50"
    fi
    log "done: main PID $(systemctl show -p MainPID --value "$UNIT") serves now; $main_pid drains and exits"
}

case ${1:-} in
--in-unit)
    [ $# -eq 4 ] || die "usage: $0 --in-unit OLD_PID PID_FILE BINARY"
    in_unit "$2" "$3" "$4"
    ;;
--print-dropin)
    print_dropin "$STAGE_DIR/carousel-upgrade.sh" "${2:-/run/carousel/carousel.pid}" "$BIN"
    ;;
-h | --help)
    sed -n '2,9p' "$0"
    ;;
*)
    [ $# -le 1 ] || die "usage: $0 [NEW_BINARY]"
    admin "${1:-}"
    ;;
esac
