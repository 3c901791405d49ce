#!/usr/bin/env bash
# Tern vs Mosquitto (and rumqttd, the Rust peer), side by side, on loopback (issues 4, 21).
#
#   scripts/bench-compare.sh            # default: 10 s measured + 2 s warm-up per run (~8 min)
#   scripts/bench-compare.sh --quick    # 3 s measured + 1 s warm-up per run (~3 min), for trying it
#   scripts/bench-compare.sh --duration 5 --warmup 1
#   scripts/bench-compare.sh --only fanout-q1,idle   # a subset of the scenarios (ids below)
#   scripts/bench-compare.sh --only idle-cpu   # 19,000 idle connections, CPU over 5 min (not in the default set)
#   scripts/bench-compare.sh --only tls-idle,tls-connect,tls-p2p-q0,tls-p2p-q1,tls-fanout-q0   # TLS 1.3
#   scripts/bench-compare.sh --only ws-idle   # idle WebSocket connections (scripts/ws-idle.py)
#
# For each scenario, each broker is started fresh (one broker running at a time), the same
# `tern bench ... --json` runs against it, and the broker's CPU time (utime+stime of
# /proc/PID/stat) and memory (VmRSS/VmHWM of /proc/PID/status) are read around the run.
# The table goes to stdout and to target/bench-compare/results.md, the raw JSON of every run
# to target/bench-compare/runs/. Run from anywhere inside the repository; needs python3,
# and apt-get (as root) if Mosquitto is not installed. The throughput scenarios also run
# rumqttd (bytebeamio's broker, 0.20.0, built once into target/bench-tools with
# `cargo install`; --no-rumqttd leaves it out). The TLS scenarios (tls-*) run both brokers
# with a TLS listener on one certificate (ECDSA P-256, made with openssl for the run).
set -euo pipefail

DURATION=10
WARMUP=2
ONLY=""
RUMQTTD_WANTED=1
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=3; WARMUP=1 ;;
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        --no-rumqttd) RUMQTTD_WANTED=0 ;;
        -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
DRAIN=2                 # longest wait for late messages after publishing stops
IDLE_CONNS=19000        # idle-connection scenario (this machine: 20,000 open files per process)
CONNECT_RATE=5000
MOSQ_PORT=18831
TERN_PORT=18832
RUMQ_PORT=18835         # rumqttd's MQTT 5 listener (its 3.1.1 one on 18836)
MOSQ_TLS_PORT=18837
TERN_TLS_PORT=18838
IDLE_TLS_CONNS=4000     # idle TLS connections (MQTT 3.1.1)
TLS_CONNECTS=4000       # TLS handshakes + CONNECT, as fast as the broker takes them
MOSQ_WS_PORT=18839
TERN_WS_PORT=18840
IDLE_WS_CONNS=15000     # idle WebSocket connections (MQTT 3.1.1), opened by scripts/ws-idle.py
TRANSPORT=tcp           # tls or ws while those scenarios run: start_broker and port_of follow it
# Shared broker limits (Tern's defaults; Mosquitto's default inflight is 20, raised to match).
MAX_INFLIGHT=100
MAX_QUEUED=1000
MAX_QUEUED_BYTES=67108864

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/target/bench-compare"
rm -rf "$OUT"
mkdir -p "$OUT/runs" "$OUT/conf" "$OUT/logs"
CMDS="$OUT/commands.txt"
: > "$CMDS"
TERN="$ROOT/target/release/tern"
START_TIME=$(date +%s)

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

# --- prerequisites --------------------------------------------------------------------------
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    say "Mosquitto not found: installing the Debian package"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto
fi
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
# The Debian package starts a service on port 1883; it is left alone (we use other ports).
command -v python3 >/dev/null || { say "python3 is needed"; exit 1; }
RUMQTTD=""
if [ "$RUMQTTD_WANTED" = 1 ]; then
    RUMQTTD="$(command -v rumqttd || echo "$ROOT/target/bench-tools/bin/rumqttd")"
    if [ ! -x "$RUMQTTD" ]; then
        say "rumqttd not found: building it once (cargo install rumqttd 0.20.0, a few minutes)"
        run_logged cargo install rumqttd --version 0.20.0 --root "$ROOT/target/bench-tools" --quiet
    fi
fi
command -v taskset >/dev/null || { say "taskset (util-linux) is needed"; exit 1; }
if ! command -v openssl >/dev/null 2>&1; then
    say "openssl not found (it makes the TLS scenarios' certificate): installing the Debian package"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y openssl
fi

run_logged cargo build --release --bin tern

# Open files: brokers and `tern bench` inherit this; 19,000 idle connections need it.
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
if [ "$NOFILE" != unlimited ] && [ "$NOFILE" -lt $((IDLE_CONNS + 100)) ]; then
    IDLE_CONNS=$((NOFILE - 200))
    say "open-files limit $NOFILE: idle scenario lowered to $IDLE_CONNS connections"
fi
[ "$IDLE_WS_CONNS" -gt "$IDLE_CONNS" ] && IDLE_WS_CONNS=$IDLE_CONNS
CLK_TCK=$(getconf CLK_TCK)

# --- brokers --------------------------------------------------------------------------------
BROKER_PID=""
SLOW_PID=""
SAMPLER_PID=""
SCRAPER_PID=""
cleanup() {
    for p in $SAMPLER_PID $SCRAPER_PID $SLOW_PID $BROKER_PID; do
        kill "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

write_configs() { # $1: sys interval in seconds
    local sys="$1"
    {
        echo "listener $MOSQ_PORT 127.0.0.1"
        echo "max_connections -1"
        echo "allow_anonymous true"
        echo "persistence false"
        echo "max_inflight_messages $MAX_INFLIGHT"
        echo "max_queued_messages $MAX_QUEUED"
        echo "max_queued_bytes $MAX_QUEUED_BYTES"
        echo "sys_interval $sys"
        echo "log_dest stderr"
        echo "log_type error"
        echo "log_type warning"
        echo "connection_messages false"
        if [ "$(id -u)" -eq 0 ]; then echo "user root"; fi
    } > "$OUT/conf/mosquitto-sys$sys.conf"
    # rumqttd has no $SYS; its inflight matches the others', its queues are its own design
    # (a commit log per subscription's filter, segments of 100 MiB).
    cat > "$OUT/conf/rumqttd-sys$sys.toml" <<EOF
id = 0
[router]
id = 0
max_connections = 30000
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "127.0.0.1:$((RUMQ_PORT + 1))"
next_connection_delay_ms = 0
    [v4.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = $MAX_INFLIGHT
    dynamic_filters = true
[v5.1]
name = "v5-1"
listen = "127.0.0.1:$RUMQ_PORT"
next_connection_delay_ms = 0
    [v5.1.connections]
    connection_timeout_ms = 60000
    max_payload_size = 1048576
    max_inflight_count = $MAX_INFLIGHT
EOF
    cat > "$OUT/conf/tern-sys$sys.toml" <<EOF
bind = "127.0.0.1:$TERN_PORT"
max_inflight_messages = $MAX_INFLIGHT
max_queued_messages = $MAX_QUEUED
max_queued_bytes = $MAX_QUEUED_BYTES
sys_interval_secs = $sys
persistence = false
EOF
}
write_configs 0
write_configs 1
# TLS: a CA and a server certificate for 127.0.0.1 (ECDSA P-256), and each broker's
# sys0 configuration with a TLS listener on it.
TLS_DIR="$OUT/tls"
mkdir -p "$TLS_DIR"
(
    cd "$TLS_DIR"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 7 \
        -keyout ca.key -out ca.pem -subj "/CN=bench-compare CA" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout server.key -out server.csr -subj "/CN=127.0.0.1" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' > ext.cnf
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 7 \
        -extfile ext.cnf -out server.pem 2>/dev/null
)
chmod 644 "$TLS_DIR"/*.key
{ sed "s/^listener $MOSQ_PORT .*/listener $MOSQ_TLS_PORT 127.0.0.1/" "$OUT/conf/mosquitto-sys0.conf"
  printf 'certfile %s\nkeyfile %s\n' "$TLS_DIR/server.pem" "$TLS_DIR/server.key"
} > "$OUT/conf/mosquitto-tls.conf"
{ cat "$OUT/conf/tern-sys0.toml"
  printf '\n[[listeners]]\nbind = "127.0.0.1:%s"\ntransport = "tls"\ncert_file = "%s"\nkey_file = "%s"\n' \
      "$TERN_TLS_PORT" "$TLS_DIR/server.pem" "$TLS_DIR/server.key"
} > "$OUT/conf/tern-tls.toml"
TLS_ARGS=(--cafile "$TLS_DIR/ca.pem" -h 127.0.0.1)
# WebSocket: Mosquitto 2.0.11 starts a WebSocket listener only beside a plain one (its
# libwebsockets build), so it keeps its plain listener.
{ cat "$OUT/conf/mosquitto-sys0.conf"; printf 'listener %s 127.0.0.1\nprotocol websockets\n' "$MOSQ_WS_PORT"
} > "$OUT/conf/mosquitto-ws.conf"
{ cat "$OUT/conf/tern-sys0.toml"
  printf '\n[[listeners]]\nbind = "127.0.0.1:%s"\ntransport = "ws"\n' "$TERN_WS_PORT"
} > "$OUT/conf/tern-ws.toml"
# The scraped variant: the same broker with its HTTP listener on.
SCRAPE_TOKEN=bench-compare-scrape-token
HTTP_PORT=18833
{ cat "$OUT/conf/tern-sys0.toml"; printf '\n[http]\nbind = "127.0.0.1:%s"\ntokens = ["%s"]\n' \
    "$HTTP_PORT" "$SCRAPE_TOKEN"; } > "$OUT/conf/tern-scraped.toml"
# One thread for the connections (worker_threads = 1): what a mostly idle fleet may choose.
{ cat "$OUT/conf/tern-sys0.toml"; echo "worker_threads = 1"; } > "$OUT/conf/tern-1thread.toml"
# The hooked variant: a webhook on every published message, to an endpoint that accepts
# connections and never answers (the hanging watcher below).
HOOK_PORT=18834
{ cat "$OUT/conf/tern-sys0.toml"; printf '\n[[webhooks]]\nurl = "http://127.0.0.1:%s/hook"\nevents = ["message.published"]\n' \
    "$HOOK_PORT"; } > "$OUT/conf/tern-hooked.toml"

port_of() {
    case "$TRANSPORT-$1" in
        tls-mosquitto) echo $MOSQ_TLS_PORT ;;
        tls-*) echo $TERN_TLS_PORT ;;
        ws-mosquitto) echo $MOSQ_WS_PORT ;;
        ws-*) echo $TERN_WS_PORT ;;
        *-mosquitto) echo $MOSQ_PORT ;;
        *-rumqttd) echo $RUMQ_PORT ;;
        *) echo $TERN_PORT ;;
    esac
}

port_open() { python3 - "$1" <<'EOF'
import socket, sys
s = socket.socket()
s.settimeout(0.2)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

start_broker() { # $1 broker, $2 sys interval, $3 cpu list for taskset ("" = unpinned), $4 log name
    local broker="$1" sys="$2" cpus="$3" log="$OUT/logs/$4-$1.log" port
    port=$(port_of "$broker")
    if port_open "$port"; then say "port $port is already in use"; exit 1; fi
    local cmd=()
    [ -n "$cpus" ] && cmd=(taskset -c "$cpus")
    if [ "$TRANSPORT" != tcp ] && [ "$broker" = mosquitto ]; then
        cmd+=("$MOSQUITTO" -c "$OUT/conf/mosquitto-$TRANSPORT.conf")
    elif [ "$TRANSPORT" != tcp ]; then
        cmd+=("$TERN" serve --config "$OUT/conf/tern-$TRANSPORT.toml")
    elif [ "$broker" = mosquitto ]; then
        cmd+=("$MOSQUITTO" -c "$OUT/conf/mosquitto-sys$sys.conf")
    elif [ "$broker" = rumqttd ]; then
        cmd+=("$RUMQTTD" --quiet -c "$OUT/conf/rumqttd-sys$sys.toml")
    elif [ "$broker" = tern-scraped ] || [ "$broker" = tern-watched ]; then
        cmd+=("$TERN" serve --config "$OUT/conf/tern-scraped.toml")
    elif [ "$broker" = tern-1thread ]; then
        cmd+=("$TERN" serve --config "$OUT/conf/tern-1thread.toml")
    elif [ "$broker" = tern-hooked ]; then
        cmd+=("$TERN" serve --config "$OUT/conf/tern-hooked.toml")
    else
        cmd+=("$TERN" serve --config "$OUT/conf/tern-sys$sys.toml")
    fi
    say "+ ${cmd[*]} 2>$log &"
    echo "${cmd[*]} &" >> "$CMDS"
    "${cmd[@]}" 2> "$log" > /dev/null &
    BROKER_PID=$!
    for _ in $(seq 100); do
        port_open "$port" && { sleep 0.3; return 0; }
        kill -0 "$BROKER_PID" 2>/dev/null || break
        sleep 0.1
    done
    say "$broker did not start; log:"; cat "$log" >&2; exit 1
}

stop_broker() {
    kill "$BROKER_PID" 2>/dev/null || true
    wait "$BROKER_PID" 2>/dev/null || true
    BROKER_PID=""
}

status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

bench() { # $1 output json, rest: tern bench arguments
    local out="$1"; shift
    run_logged "$TERN" bench "$@" --json --quiet > "$out"
}

# Writes runs/<id>-<broker>.json: the bench summary plus the broker's measurements.
record() { # $1 id, $2 broker, $3 bench json, $4 cpu ticks, $5.. key=value extras
    local id="$1" broker="$2" json="$3" ticks="$4"; shift 4
    python3 - "$OUT/runs/$id-$broker.json" "$json" "$id" "$broker" "$ticks" "$CLK_TCK" \
        "$(status_kb "$BROKER_PID" VmRSS)" "$(status_kb "$BROKER_PID" VmHWM)" "$@" <<'EOF'
import json, sys
out, src, sid, broker, ticks, tck, rss, hwm, *extra = sys.argv[1:]
bench = json.load(open(src)) if src else None
rec = {"id": sid, "broker": broker, "bench": bench, "cpu_s": int(ticks) / int(tck),
       "rss_kb": int(rss), "hwm_kb": int(hwm)}
for kv in extra:
    k, v = kv.split("=", 1)
    try:
        v = json.loads(v)
    except ValueError:
        pass
    rec[k] = v
json.dump(rec, open(out, "w"), indent=1)
EOF
}


# One run: $1 run id (file names), $2 broker, $3 taskset cpus ("" = unpinned), rest: bench
# args. Starts the broker fresh, runs `tern bench`, records, stops the broker.
run_once() {
    local run="$1" broker="$2" cpus="$3"; shift 3
    start_broker "$broker" 0 "$cpus" "$run"
    local port c0 c1
    port=$(port_of "$broker")
    case "$broker" in
        tern-scraped) start_watcher "$run" metrics ;;
        tern-watched) start_watcher "$run" dashboard ;;
        tern-hooked) start_watcher "$run" hang ;;
    esac
    c0=$(cpu_ticks "$BROKER_PID")
    bench "$OUT/runs/$run-$broker.bench.json" "$@" -p "$port" \
        -d "$DURATION" --warmup "$WARMUP" --drain "$DRAIN"
    c1=$(cpu_ticks "$BROKER_PID")
    local scrapes=null
    [ -n "$SCRAPER_PID" ] && scrapes=$(stop_watcher "$run")
    record "$run" "$broker" "$OUT/runs/$run-$broker.bench.json" $((c1 - c0)) \
        "pinned=\"$cpus\"" "scrapes=$scrapes"
    stop_broker
}

# The watcher of a run: `metrics` is Prometheus's part, GET /metrics once a second (as a
# scrape_interval of 1s does), counting the answers that were 200 with the figures in them;
# `dashboard` is an open dashboard page's, its live stream read as the page reads it,
# counting the events; `hang` is a webhook endpoint that accepts connections and never
# reads or answers, counting the connections.
start_watcher() { # $1 run id (for the log), $2 metrics, dashboard or hang
    local port=$HTTP_PORT
    [ "$2" = hang ] && port=$HOOK_PORT
    say "+ python3 <$2 watcher of http://127.0.0.1:$port> &"
    echo "python3 $2 watcher of http://127.0.0.1:$port (see scripts/bench-compare.sh) &" >> "$CMDS"
    python3 -u - "$port" "$SCRAPE_TOKEN" "$2" > "$OUT/logs/$1-watcher.out" <<'EOF' &
import sys, time, urllib.request
port, token, kind = sys.argv[1:]
auth = {"Authorization": f"Bearer {token}"}
if kind == "hang":
    import socket
    server = socket.create_server(("127.0.0.1", int(port)))
    held = []
    while True:
        held.append(server.accept()[0])
        print("ok", flush=True)
if kind == "dashboard":
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/dashboard/stream", headers=auth)
    with urllib.request.urlopen(req) as stream:
        for line in stream:
            if line.startswith(b"event:"):
                print("ok", flush=True)
req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=auth)
while True:
    started = time.monotonic()
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            ok = r.status == 200 and b"tern_messages_received_total" in r.read()
    except OSError:
        ok = False
    print("ok" if ok else "failed", flush=True)
    time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
EOF
    SCRAPER_PID=$!
}

stop_watcher() { # $1 run id: prints how many scrapes or events came
    kill "$SCRAPER_PID" 2>/dev/null || true; wait "$SCRAPER_PID" 2>/dev/null || true
    SCRAPER_PID=""
    grep -c '^ok$' "$OUT/logs/$1-watcher.out" || true
}

# A throughput scenario: $1 id, $2 taskset cpus ("" = unpinned), rest: bench args.
scenario() {
    local id="$1" cpus="$2"; shift 2
    want "$id" || return 0
    local brokers=(mosquitto tern)
    [ -n "$RUMQTTD" ] && [ "$TRANSPORT" = tcp ] && brokers+=(rumqttd)
    for broker in "${brokers[@]}"; do
        say ""; say "=== $id on $broker"
        run_once "$id" "$broker" "$cpus" "$@"
    done
}

# The fixed-rate latency run: its p99 swings by several times from one run to the next
# on a shared machine, so it runs LATENCY_ROUNDS times, alternating the brokers, and the
# table shows each broker's median round (by p99); every round's p99 is listed below it.
LATENCY_ROUNDS=${LATENCY_ROUNDS:-3}
latency_scenario() {
    local id="$1"; shift
    want "$id" || return 0
    for round in $(seq "$LATENCY_ROUNDS"); do
        for broker in mosquitto tern tern-1thread; do
            say ""; say "=== $id on $broker, round $round of $LATENCY_ROUNDS"
            run_once "$id-r$round" "$broker" "" "$@"
        done
    done
    python3 - "$OUT/runs" "$id" "$LATENCY_ROUNDS" <<'PYEOF'
import json, os, sys
runs, sid, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
for broker in ("mosquitto", "tern", "tern-1thread"):
    recs = [json.load(open(os.path.join(runs, f"{sid}-r{r}-{broker}.json"))) for r in range(1, rounds + 1)]
    for r in recs:
        os.remove(os.path.join(runs, f"{r['id']}-{broker}.json"))
    p99s = [r["bench"]["latency_us"]["p99"] for r in recs]
    median = sorted(recs, key=lambda r: r["bench"]["latency_us"]["p99"])[len(recs) // 2]
    median["id"] = sid
    median["p99_rounds_us"] = p99s
    json.dump(median, open(os.path.join(runs, f"{sid}-{broker}.json"), "w"), indent=1)
PYEOF
}

# What watching costs: Tern alone against Tern watched ($2: tern-scraped, /metrics every
# second; tern-watched, a dashboard page's live stream open), SCRAPE_ROUNDS alternating
# rounds of each (Mosquitto has neither). The spread of the unwatched rounds is the noise
# the watched ones are judged against.
SCRAPE_ROUNDS=${SCRAPE_ROUNDS:-3}
watch_scenario() {
    local id="$1" watched="$2"; shift 2
    want "$id" || return 0
    for round in $(seq "$SCRAPE_ROUNDS"); do
        for broker in tern "$watched"; do
            say ""; say "=== $id on $broker, round $round of $SCRAPE_ROUNDS"
            run_once "$id-r$round" "$broker" "" "$@"
        done
    done
}

# Idle connections: RSS per connection = (RSS with N idle - RSS empty) / N.
# Opens $4 idle connections (keep-alive 60 s; rest: more bench args) to the running broker
# ($1: its name, for the port and the file names; $2: run id) held for $3 seconds by `tern
# bench conn` in the background (IDLE_BENCH_PID), and waits until the broker holds them all,
# plus 2 s to settle (CONNACKs sent, buffers released). Sets IDLE_OPENED to how many it holds.
open_idle() {
    local broker="$1" id="$2" hold="$3" count="$4" port base_fds fds=0
    shift 4
    port=$(port_of "$broker")
    base_fds=$(ls "/proc/$BROKER_PID/fd" | wc -l)
    local cmd=("$TERN" bench conn -p "$port" -c "$count" --connect-rate "$CONNECT_RATE"
        -k 60 -d "$hold" --json --quiet "$@")
    # `tern bench` does not speak WebSocket: an independent client does.
    [ "$TRANSPORT" = ws ] && cmd=(python3 "$ROOT/scripts/ws-idle.py" --port "$port"
        --connections "$count" --hold "$hold")
    say "+ ${cmd[*]} &"
    echo "${cmd[*]} &" >> "$CMDS"
    "${cmd[@]}" > "$OUT/runs/$id-$broker.bench.json" &
    IDLE_BENCH_PID=$!
    for _ in $(seq 600); do
        fds=$(ls "/proc/$BROKER_PID/fd" | wc -l)
        [ "$fds" -ge $((base_fds + count)) ] && break
        kill -0 "$IDLE_BENCH_PID" 2>/dev/null || break
        sleep 0.1
    done
    sleep 2
    IDLE_OPENED=$((fds - base_fds))
}

# $1 id, $2 connections, rest: more bench args (TLS: its options and -V 311).
idle_scenario() {
    local id="$1" count="$2"
    shift 2
    want "$id" || return 0
    local hold=$((DURATION < 5 ? 5 : DURATION))
    for broker in mosquitto tern; do
        say ""; say "=== $id ($count connections, $TRANSPORT) on $broker"
        start_broker "$broker" 0 "" "$id"
        sleep 1
        local empty_kb c0
        empty_kb=$(status_kb "$BROKER_PID" VmRSS)
        c0=$(cpu_ticks "$BROKER_PID")
        open_idle "$broker" "$id" "$hold" "$count" "$@"
        record "$id" "$broker" "" $(( $(cpu_ticks "$BROKER_PID") - c0 )) \
            "empty_kb=$empty_kb" "connections=$IDLE_OPENED" "target=$count"
        wait "$IDLE_BENCH_PID" || say "tern bench conn exited with an error"
        stop_broker
    done
}

# What idle connections cost in CPU: $IDLE_CONNS connections with a keep-alive of 60 s
# (each sends PINGREQ once a minute), the broker's CPU over IDLE_CPU_SECS (300) once they are
# all open. Not in the default set (it takes twice that): ask for it with --only idle-cpu.
IDLE_CPU_SECS=${IDLE_CPU_SECS:-300}
idle_cpu_scenario() {
    local id=idle-cpu
    [ -n "$ONLY" ] && want "$id" || return 0
    for broker in mosquitto tern; do
        say ""; say "=== $id ($IDLE_CONNS connections, ${IDLE_CPU_SECS} s) on $broker"
        start_broker "$broker" 0 "" "$id"
        sleep 1
        open_idle "$broker" "$id" $((IDLE_CPU_SECS + 30)) "$IDLE_CONNS"
        local c0
        c0=$(cpu_ticks "$BROKER_PID")
        sleep "$IDLE_CPU_SECS"
        record "$id" "$broker" "" $(( $(cpu_ticks "$BROKER_PID") - c0 )) \
            "connections=$IDLE_OPENED" "window_s=$IDLE_CPU_SECS"
        kill "$IDLE_BENCH_PID" 2>/dev/null || true; wait "$IDLE_BENCH_PID" 2>/dev/null || true
        stop_broker
    done
}

# A subscriber that connects (MQTT 3.1.1, keep-alive off), subscribes to bench/# at QoS 1,
# then never reads; its receive buffer is 16 KB, so it backs up at once.
start_slow_subscriber() { # $1 port
    say "+ python3 <slow subscriber: CONNECT, SUBSCRIBE bench/# QoS 1, never read> 127.0.0.1:$1 &"
    echo "python3 slow subscriber on 127.0.0.1:$1 (see scripts/bench-compare.sh) &" >> "$CMDS"
    python3 -u - "$1" > "$OUT/logs/slow-sub.out" <<'EOF' &
import socket, sys, time
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
s.connect(("127.0.0.1", int(sys.argv[1])))
cid = b"slow-subscriber"
var = b"\x00\x04MQTT\x04\x02\x00\x00"                     # 3.1.1, clean session, keep-alive 0
body = var + len(cid).to_bytes(2, "big") + cid
s.sendall(bytes([0x10, len(body)]) + body)
def read(n):
    b = b""
    while len(b) < n:
        chunk = s.recv(n - len(b))
        if not chunk:
            sys.exit("closed")
        b += chunk
    return b
assert read(4)[0] == 0x20, "no CONNACK"
topic = b"bench/#"
body = b"\x00\x01" + len(topic).to_bytes(2, "big") + topic + b"\x01"
s.sendall(bytes([0x82, len(body)]) + body)
assert read(5)[0] == 0x90, "no SUBACK"
print("subscribed", flush=True)
while True:
    time.sleep(3600)                                      # never read again
EOF
    SLOW_PID=$!
    for _ in $(seq 50); do
        grep -q subscribed "$OUT/logs/slow-sub.out" 2>/dev/null && return 0
        sleep 0.1
    done
    say "slow subscriber did not subscribe"; exit 1
}

read_dropped() { # $1 port: the broker's $SYS dropped count
    "$TERN" sub -p "$1" -t '$SYS/broker/publish/messages/dropped' -C 1 -W 5 2>/dev/null \
        | tail -n 1 || echo null
}

# Fan-out QoS 1 with and without a subscriber that reads nothing ($SYS every second).
slow_scenario() {
    want slow || return 0
    local args=(fanout -P 1 -S 64 -q 1 -w 100)
    for variant in normal slow; do
        local id="slow-$variant"
        for broker in mosquitto tern; do
            say ""; say "=== $id on $broker"
            start_broker "$broker" 1 "" "$id"
            local port c0 c1 dropped
            port=$(port_of "$broker")
            [ "$variant" = slow ] && start_slow_subscriber "$port"
            # sample RSS twice a second to show whether it stays bounded
            ( while kill -0 "$BROKER_PID" 2>/dev/null; do
                  status_kb "$BROKER_PID" VmRSS 2>/dev/null || true; sleep 0.5
              done ) > "$OUT/runs/$id-$broker.rss" 2>/dev/null &
            SAMPLER_PID=$!
            c0=$(cpu_ticks "$BROKER_PID")
            bench "$OUT/runs/$id-$broker.bench.json" "${args[@]}" -p "$port" \
                -d "$DURATION" --warmup "$WARMUP" --drain "$DRAIN"
            c1=$(cpu_ticks "$BROKER_PID")
            sleep 1.5   # one more $SYS interval
            dropped=$(read_dropped "$port")
            [ -z "$dropped" ] && dropped=null
            kill "$SAMPLER_PID" 2>/dev/null || true; wait "$SAMPLER_PID" 2>/dev/null || true
            SAMPLER_PID=""
            local samples
            samples=$(paste -sd, "$OUT/runs/$id-$broker.rss")
            record "$id" "$broker" "$OUT/runs/$id-$broker.bench.json" $((c1 - c0)) \
                "dropped=$dropped" "rss_samples_kb=[$samples]"
            if [ -n "$SLOW_PID" ]; then
                kill "$SLOW_PID" 2>/dev/null || true; wait "$SLOW_PID" 2>/dev/null || true
                SLOW_PID=""
            fi
            stop_broker
        done
    done
}

# --- the scenario set -----------------------------------------------------------------------
say "Tern vs Mosquitto: ${DURATION} s measured + ${WARMUP} s warm-up per run; open files $NOFILE"
scenario fanin-q0   "" fanin -P 8 -S 1 -q 0 -w 1000
scenario fanin-q1   "" fanin -P 8 -S 1 -q 1 -w 100
scenario fanout-q0  "" fanout -P 1 -S 64 -q 0 -w 1000
scenario fanout-q1  "" fanout -P 1 -S 64 -q 1 -w 100
scenario p2p-q0     "" p2p -n 64 -q 0 -w 100
scenario p2p-q1     "" p2p -n 64 -q 1 -w 100
scenario p2p-4k-q1  "" p2p -n 64 -q 1 -s 4096 -w 100
# Publishers paced only by their PUBACKs (-w 0), as most clients publish: the broker reads
# faster than it can write out, and must push back rather than drop what it acknowledged.
scenario p2p-q1-unpaced   "" p2p -n 64 -q 1 -w 0
scenario fanin-q1-unpaced "" fanin -P 8 -S 1 -q 1 -w 0
scenario fanout-q1-unpaced "" fanout -P 1 -S 64 -q 1 -w 0
latency_scenario p2p-10k-q1 p2p -n 16 -q 1 -r 625
latency_scenario p2p-1k-q1 p2p -n 10 -q 1 -r 100
idle_scenario idle "$IDLE_CONNS"
idle_cpu_scenario
slow_scenario
scenario fanout-q1-1core "0"   fanout -P 1 -S 64 -q 1 -w 100
scenario fanout-q1-2core "0,1" fanout -P 1 -S 64 -q 1 -w 100
watch_scenario scrape-p2p-q1 tern-scraped p2p -n 64 -q 1 -w 100
watch_scenario dashboard-p2p-q0 tern-watched p2p -n 64 -q 0 -w 100
watch_scenario dashboard-fanin-q1 tern-watched fanin -P 8 -S 1 -q 1 -w 100
watch_scenario webhook-p2p-q1 tern-hooked p2p -n 64 -q 1 -w 100
# TLS 1.3 on both brokers (TRANSPORT=tls: their TLS listeners, one certificate).
TRANSPORT=tls idle_scenario tls-idle "$IDLE_TLS_CONNS" -V 311 "${TLS_ARGS[@]}"
TRANSPORT=ws idle_scenario ws-idle "$IDLE_WS_CONNS"
TRANSPORT=tls scenario tls-connect "" conn -c "$TLS_CONNECTS" -k 60 "${TLS_ARGS[@]}"
TRANSPORT=tls scenario tls-p2p-q0 "" p2p -n 64 -q 0 -w 100 "${TLS_ARGS[@]}"
TRANSPORT=tls scenario tls-p2p-q1 "" p2p -n 64 -q 1 -w 100 "${TLS_ARGS[@]}"
TRANSPORT=tls scenario tls-fanout-q0 "" fanout -P 1 -S 64 -q 0 -w 1000 "${TLS_ARGS[@]}"

ELAPSED=$(( $(date +%s) - START_TIME ))

# --- the table ------------------------------------------------------------------------------
python3 - "$OUT" "$DURATION" "$WARMUP" "$ELAPSED" "$NOFILE" "$IDLE_CONNS" <<'EOF' | tee "$OUT/results.md"
import glob, json, os, platform, sys
out, duration, warmup, elapsed, nofile, idle_target = sys.argv[1:]
runs = {}
for path in glob.glob(os.path.join(out, "runs", "*.json")):
    if path.endswith(".bench.json"):
        continue
    r = json.load(open(path))
    runs[(r["id"], r["broker"])] = r

ORDER = [
    ("fanin-q0", "fan-in 8→1, QoS 0, -w 1000"),
    ("fanin-q1", "fan-in 8→1, QoS 1, -w 100"),
    ("fanout-q0", "fan-out 1→64, QoS 0, -w 1000"),
    ("fanout-q1", "fan-out 1→64, QoS 1, -w 100"),
    ("p2p-q0", "p2p 64 pairs, QoS 0, -w 100"),
    ("p2p-q1", "p2p 64 pairs, QoS 1, -w 100"),
    ("p2p-4k-q1", "p2p 64 pairs, 4 KB, QoS 1, -w 100"),
    ("p2p-q1-unpaced", "p2p 64 pairs, QoS 1, -w 0 (paced by PUBACKs only)"),
    ("fanin-q1-unpaced", "fan-in 8→1, QoS 1, -w 0 (paced by PUBACKs only)"),
    ("fanout-q1-unpaced", "fan-out 1→64, QoS 1, -w 0 (paced by PUBACKs only)"),
    ("p2p-10k-q1", "p2p 16 pairs, 10,000 msg/s total, QoS 1"),
    ("p2p-1k-q1", "p2p 10 pairs, 1,000 msg/s total, QoS 1"),
    ("idle", f"idle connections ({idle_target})"),
    ("slow-normal", "fan-out 1→64 QoS 1, $SYS 1 s, no slow sub"),
    ("slow-slow", "same + 1 subscriber reading nothing"),
    ("fanout-q1-1core", "fan-out 1→64 QoS 1, broker on 1 core"),
    ("fanout-q1-2core", "fan-out 1→64 QoS 1, broker on 2 cores"),
    ("tls-p2p-q0", "TLS: p2p 64 pairs, QoS 0, -w 100"),
    ("tls-p2p-q1", "TLS: p2p 64 pairs, QoS 1, -w 100"),
    ("tls-fanout-q0", "TLS: fan-out 1→64, QoS 0, -w 1000"),
]

def metrics(r):
    b = r.get("bench")
    m = {"rss": r["hwm_kb"] / 1024}
    if r["id"] in ("idle", "tls-idle", "ws-idle"):
        m["rss"] = r["rss_kb"] / 1024
        return m
    if not b:
        return m
    m["rate"] = b.get("delivered_per_sec")
    if b.get("received_total"):
        m["cpu"] = r["cpu_s"] * 1e6 / b["received_total"]
    lat = b.get("latency_us") or {}
    m["p50"], m["p99"] = lat.get("p50"), lat.get("p99")
    m["lost"] = b.get("lost_percent")
    return m

def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "rate":
        return f"{v:,.0f}"
    if kind == "cpu":
        return f"{v:.2f}"
    if kind in ("p50", "p99"):
        return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"
    if kind == "rss":
        return f"{v:.1f} MiB"
    if kind == "lost":
        return f"{v:.2f} %"
    return str(v)

def ratio(t, m):
    if t is None or m is None or m == 0:
        return "–"
    return f"**{t / m:.2f}×**"

lines = []
p = lines.append
p(f"Tern vs Mosquitto — {duration} s measured + {warmup} s warm-up per run; "
  f"script took {int(elapsed) // 60} min {int(elapsed) % 60} s; open-files limit {nofile}")
p("")
keys = ["rate", "cpu", "p50", "p99", "rss", "lost"]
if any((sid, b) in runs for sid, _ in ORDER for b in ("mosquitto", "tern")):
    p("| scenario | broker | delivered msg/s | broker CPU µs/msg | p50 | p99 | RSS | lost |")
    p("|---|---|---:|---:|---:|---:|---:|---:|")
for sid, label in ORDER:
    mo, te = runs.get((sid, "mosquitto")), runs.get((sid, "tern"))
    if not mo and not te:
        continue
    mm = metrics(mo) if mo else {}
    tm = metrics(te) if te else {}
    # The other rows some scenarios have: rumqttd beside the two, Tern on one thread.
    others = [(b, metrics(runs[(sid, b)])) for b in ("rumqttd", "tern-1thread") if (sid, b) in runs]
    for name, m in [("mosquitto", mm), ("tern", tm)] + others:
        p(f"| {label} | {name} | " + " | ".join(fmt(m.get(k), k) for k in keys) + " |")
    p(f"| {label} | tern/mosquitto | "
      + " | ".join(ratio(tm.get(k), mm.get(k)) for k in keys[:-1]) + " | |")
    for name, m in others:
        over, under = ("tern", name) if name == "rumqttd" else (name, "mosquitto")
        top, bottom = (tm, m) if name == "rumqttd" else (m, mm)
        p(f"| {label} | {over}/{under} | "
          + " | ".join(ratio(top.get(k), bottom.get(k)) for k in keys[:-1]) + " | |")

p("")
for sid, what in (("p2p-10k-q1", "10,000"), ("p2p-1k-q1", "1,000")):
    lat = {b: runs.get((sid, b)) for b in ("mosquitto", "tern", "tern-1thread")}
    if all(lat.values()) and all("p99_rounds_us" in r for r in lat.values()):
        p(f"The p2p {what} msg/s rows are each broker's median of "
          f"{len(lat['tern']['p99_rounds_us'])} alternating rounds (by p99); p99 of every round: "
          + "; ".join(f"{b} " + ", ".join(f"{v:,.0f} µs" for v in r["p99_rounds_us"]) for b, r in lat.items())
          + ".")
        p("")
p("RSS is the broker's peak (VmHWM) over its run, except for idle connections (VmRSS while "
  "they are held). Broker CPU per message = (utime+stime during the whole `tern bench` run, "
  "warm-up and drain included) / all messages delivered in that run (`received_total`).")

IDLE = (("idle", f"**Idle connections** ({idle_target}, TCP)"),
        ("tls-idle", "**Idle TLS connections** (MQTT 3.1.1 over TLS 1.3)"),
        ("ws-idle", "**Idle WebSocket connections** (MQTT 3.1.1, opened by scripts/ws-idle.py)"))
for sid, title in IDLE:
    idle = {b: runs.get((sid, b)) for b in ("mosquitto", "tern")}
    if not all(idle.values()):
        continue
    p("")
    p(f"{title}: (RSS with N idle connections − RSS of the empty broker) / N:")
    p("")
    p("| broker | connections | empty RSS | RSS with N | per connection |")
    p("|---|---:|---:|---:|---:|")
    per = {}
    for b, r in idle.items():
        n = r["connections"]
        per[b] = (r["rss_kb"] - r["empty_kb"]) * 1024 / n if n else None
        p(f"| {b} | {n:,} | {r['empty_kb'] / 1024:.1f} MiB | {r['rss_kb'] / 1024:.1f} MiB | "
          f"{per[b]:,.0f} B |")
    if per["mosquitto"]:
        p(f"| tern/mosquitto | | | | **{per['tern'] / per['mosquitto']:.2f}×** |")
    p("")
    for b, v in per.items():
        p(f"- 1,000,000 idle connections, {b}: {v * 1e6 / 2**30:.2f} GiB of broker RSS "
          f"(+ kernel socket memory, not counted here)")

tc = {b: runs.get(("tls-connect", b)) for b in ("mosquitto", "tern")}
if all(tc.values()) and all(r["bench"] for r in tc.values()):
    p("")
    p("**TLS handshakes** (`tern bench conn` opening connections as fast as the broker takes "
      "them: TCP, a full TLS 1.3 handshake, CONNECT/CONNACK; broker CPU over the whole run, "
      "holding and closing included):")
    p("")
    p("| broker | connected | per second | connect p50 | connect p99 | broker CPU per connection |")
    p("|---|---:|---:|---:|---:|---:|")
    per = {}
    for b, r in tc.items():
        c = r["bench"]["connect"]
        lat = c.get("latency_us") or {}
        per[b] = (c["per_sec"], r["cpu_s"] * 1e6 / max(1, c["connected"]))
        p(f"| {b} | {c['connected']:,} | {c['per_sec']:,.0f} | {fmt(lat.get('p50'), 'p50')} | "
          f"{fmt(lat.get('p99'), 'p99')} | {per[b][1]:,.0f} µs |")
    p(f"| tern/mosquitto | | **{per['tern'][0] / per['mosquitto'][0]:.2f}×** | | | "
      f"**{per['tern'][1] / per['mosquitto'][1]:.2f}×** |")

ic = {b: runs.get(("idle-cpu", b)) for b in ("mosquitto", "tern")}
if all(ic.values()):
    p("")
    p(f"**Idle CPU**: {idle_target} connections, keep-alive 60 s (a PINGREQ a minute each), "
      f"the broker's CPU over {ic['tern']['window_s']} s once all are open:")
    p("")
    p("| broker | connections | CPU seconds | CPU % of one core |")
    p("|---|---:|---:|---:|")
    for b, r in ic.items():
        p(f"| {b} | {r['connections']:,} | {r['cpu_s']:.2f} | {r['cpu_s'] * 100 / r['window_s']:.2f} % |")
    if ic["mosquitto"]["cpu_s"]:
        p(f"| tern/mosquitto | | **{ic['tern']['cpu_s'] / ic['mosquitto']['cpu_s']:.2f}×** | |")

sl = {(v, b): runs.get((f"slow-{v}", b)) for v in ("normal", "slow") for b in ("mosquitto", "tern")}
if all(sl.values()):
    p("")
    p("**Slow subscriber** (fan-out 1→64 QoS 1; the 65th subscriber reads nothing):")
    p("")
    p("| broker | msg/s without | msg/s with | change | peak RSS without | peak RSS with | RSS samples with (MiB) | $SYS dropped with |")
    p("|---|---:|---:|---:|---:|---:|---|---:|")
    for b in ("mosquitto", "tern"):
        n, s = sl[("normal", b)], sl[("slow", b)]
        rn, rs = n["bench"]["delivered_per_sec"], s["bench"]["delivered_per_sec"]
        samples = s.get("rss_samples_kb") or []
        step = max(1, len(samples) // 8)
        sm = ", ".join(f"{k / 1024:.0f}" for k in samples[::step])
        p(f"| {b} | {rn:,.0f} | {rs:,.0f} | {(rs / rn - 1) * 100:+.1f} % | "
          f"{n['hwm_kb'] / 1024:.1f} MiB | {s['hwm_kb'] / 1024:.1f} MiB | {sm} | {s.get('dropped')} |")

cs = {(c, b): runs.get((f"fanout-q1-{c}", b)) for c in ("1core", "2core") for b in ("mosquitto", "tern")}
if all(cs.values()):
    p("")
    p("**Core scaling** (fan-out 1→64 QoS 1, broker under `taskset`, load generator unpinned):")
    p("")
    p("| broker | 1 core msg/s | 2 cores msg/s | 2 cores / 1 core |")
    p("|---|---:|---:|---:|")
    for b in ("mosquitto", "tern"):
        one = cs[("1core", b)]["bench"]["delivered_per_sec"]
        two = cs[("2core", b)]["bench"]["delivered_per_sec"]
        p(f"| {b} | {one:,.0f} | {two:,.0f} | {two / one:.2f}× |")

WATCHED = [
    ("scrape-p2p-q1", "tern-scraped", "What a 1 s Prometheus scrape costs",
     "p2p 64 pairs QoS 1, Tern alone and Tern with `/metrics` fetched every second",
     "scraped every 1 s", "scrapes answered"),
    ("dashboard-p2p-q0", "tern-watched", "What an open dashboard page costs",
     "p2p 64 pairs QoS 0, Tern alone and Tern with a dashboard page's live stream open "
     "(its topic tree recording every message)",
     "dashboard open", "events received"),
    ("dashboard-fanin-q1", "tern-watched", "What an open dashboard page costs, fan-in",
     "fan-in 8→1 QoS 1, Tern alone and Tern with a dashboard page's live stream open",
     "dashboard open", "events received"),
    ("webhook-p2p-q1", "tern-hooked", "What a webhook whose endpoint hangs costs",
     "p2p 64 pairs QoS 1, Tern alone and Tern with a webhook on every published message "
     "to an endpoint that accepts connections and never answers",
     "webhook hanging", "connections the endpoint took"),
]
for sid, watched, title, shape, label, counted in WATCHED:
    rounds = {}
    for (rid, b), r in runs.items():
        if rid.startswith(f"{sid}-r"):
            rounds.setdefault(b, []).append(r)
    if not (rounds.get("tern") and rounds.get(watched)):
        continue
    p("")
    p(f"**{title}** ({shape}, alternating rounds):")
    p("")
    p(f"| tern | rounds (delivered msg/s) | median | {counted} |")
    p("|---|---|---:|---:|")
    med = {}
    for b in ("tern", watched):
        rs = sorted(rounds[b], key=lambda r: r["id"])
        rates = [r["bench"]["delivered_per_sec"] for r in rs]
        med[b] = sorted(rates)[len(rates) // 2]
        seen = sum(r.get("scrapes") or 0 for r in rs) if b == watched else "–"
        p(f"| {label if b == watched else 'alone'} | "
          + ", ".join(f"{v:,.0f}" for v in rates) + f" | {med[b]:,.0f} | {seen} |")
    plain = [r["bench"]["delivered_per_sec"] for r in rounds["tern"]]
    noise = (max(plain) - min(plain)) / med["tern"] * 100
    p("")
    p(f"Watched / alone (medians): **{med[watched] / med['tern']:.3f}×**; "
      f"the rounds alone spread by {noise:.1f} % of their median (the noise).")

p("")
p(f"Commands: {os.path.join(out, 'commands.txt')}; raw JSON: {os.path.join(out, 'runs')}/")
print("\n".join(lines))
EOF
say ""
say "results: $OUT/results.md (commands: $CMDS)"
