#!/usr/bin/env bash
# The Debian package as an operator meets it (CI runs this; needs root):
# builds it (scripts/deb.sh), checks the unit with systemd-analyze, installs
# it with dpkg -i, starts `/usr/bin/tern serve --config /etc/tern/tern.toml` as
# the tern user (as the unit does; CI machines run no systemd), publishes and
# subscribes through it with the Mosquitto clients, restarts it to see its
# data directory keep a session, then purges the package and checks that
# nothing is left. Uses port 1883 on 127.0.0.1 (the package's default).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
say() { echo "deb-test: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "run as root (it installs a package)"
need=()
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v mosquitto_pub >/dev/null || need+=(mosquitto-clients)
command -v adduser >/dev/null || need+=(adduser)
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${need[@]}"
fi
if dpkg -s tern >/dev/null 2>&1; then
    fail "a tern package is already installed; dpkg --purge tern first"
fi
port_open() { (exec 3<>/dev/tcp/127.0.0.1/1883) 2>/dev/null; }
port_open && fail "port 1883 is in use on 127.0.0.1: stop what listens there"

scripts/deb.sh
DEB=$(ls -t target/debian/tern_*.deb | head -n 1)
PID=""
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null
    dpkg --purge tern >/dev/null 2>&1 || true
}
trap cleanup EXIT

say "dpkg -i $DEB"
dpkg -i "$DEB"
for f in /usr/bin/tern /etc/tern/tern.toml /usr/lib/systemd/system/tern.service \
    /usr/share/man/man1/tern.1.gz /usr/share/man/man1/tern-serve.1.gz \
    /usr/share/man/man1/tern-pub.1.gz /usr/share/man/man1/tern-sub.1.gz \
    /usr/share/man/man1/tern-passwd.1.gz /usr/share/man/man1/tern-bench.1.gz \
    /usr/share/doc/tern/tern.example.toml; do
    [ -e "$f" ] || fail "$f is not installed"
done
dpkg-query -W -f='${Conffiles}\n' tern | grep -q '/etc/tern/tern.toml' ||
    fail "/etc/tern/tern.toml is not a conffile"
getent passwd tern >/dev/null || fail "no tern user"
[ "$(stat -c %U /var/lib/tern)" = tern ] || fail "/var/lib/tern is not the tern user's"
zcat /usr/share/man/man1/tern-serve.1.gz | grep -q 'tern serve' || fail "tern-serve(1) is empty"

say "systemd-analyze verify tern.service"
systemd-analyze verify /usr/lib/systemd/system/tern.service
for key in ProtectSystem=strict NoNewPrivileges=yes LimitNOFILE= 'ExecReload=/bin/kill -HUP $MAINPID'; do
    grep -qF "$key" /usr/lib/systemd/system/tern.service || fail "the unit has no $key"
done

start() {
    say "runuser -u tern -- /usr/bin/tern serve --config /etc/tern/tern.toml"
    runuser -u tern -- /usr/bin/tern serve --config /etc/tern/tern.toml 2>>target/debian/serve.log &
    PID=$!
    for _ in $(seq 100); do port_open && return 0; sleep 0.1; done
    cat target/debian/serve.log >&2
    fail "tern did not start"
}
stop() { kill "$PID"; wait "$PID" || true; PID=""; }
: > target/debian/serve.log
start
# A persistent session, away, with a message queued for it; a retained message.
mosquitto_sub -h 127.0.0.1 -i deb-test -c -q 1 -t deb/queue -W 1 || true
mosquitto_pub -h 127.0.0.1 -q 1 -t deb/queue -m queued
mosquitto_pub -h 127.0.0.1 -q 1 -r -t deb/retained -m kept
got=$(mosquitto_sub -h 127.0.0.1 -t deb/retained -C 1 -W 5)
[ "$got" = kept ] || fail "the retained message came back as '$got'"
stop
[ "$(stat -c %U /var/lib/tern/tern.redb)" = tern ] || fail "the data file is not in /var/lib/tern"
start
got=$(mosquitto_sub -h 127.0.0.1 -i deb-test -c -q 1 -t deb/queue -C 1 -W 5)
[ "$got" = queued ] || fail "the queued message came back as '$got' after a restart"
stop

say "dpkg --purge tern"
dpkg --purge tern
for f in /usr/bin/tern /etc/tern /var/lib/tern /usr/lib/systemd/system/tern.service; do
    [ ! -e "$f" ] || fail "$f is left after purge"
done
getent passwd tern >/dev/null && fail "the tern user is left after purge"
trap - EXIT
say "ok: built, verified, installed, served, restarted, purged"
