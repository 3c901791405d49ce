#!/usr/bin/env bash
# Durable QoS 1 throughput and restart time: Tern in memory, Tern with each
# `durability`, and Mosquitto with and without its persistence, in one run.
#
#   scripts/bench-persistence.sh            # 10 s measured + 2 s warm-up per run
#   scripts/bench-persistence.sh --quick    # 3 s + 1 s
#
# Load: `tern bench p2p -n 16 -q 1 -w 100 --session-expiry 3600`: 16
# publisher/subscriber pairs at QoS 1, every session persistent (MQTT 5,
# Session Expiry Interval 1 h), at most 100 messages per publisher in flight.
# With persistence on, Tern acknowledges each message only once it is stored
# for its subscriber's session (durability "fsync": after an fsync shared by
# the batch). Mosquitto with `persistence true` keeps the same state in memory
# and writes it to disk every `autosave_interval` (default 30 min), so a crash
# loses what came since: the comparison is of cost, not of guarantees.
#
# Then the restart: a persistent subscriber is left offline while N QoS 1
# messages queue for it (N from RESTART_MESSAGES, default 100000), the broker
# is stopped, and its start is timed until it accepts connections, with the
# "restored state" line of its log.
#
# Needs cargo, python3 and (for Mosquitto) apt-get as root. Results go to
# target/bench-persistence/results.md, commands to .../commands.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=10; WARMUP=2
if [ "${1:-}" = "--quick" ]; then DURATION=3; WARMUP=1; fi
RESTART_MESSAGES=${RESTART_MESSAGES:-100000}
OUT=target/bench-persistence
PORT=18841
rm -rf "$OUT"; mkdir -p "$OUT/runs" "$OUT/logs" "$OUT/conf"
CMDS="$OUT/commands.txt"; : > "$CMDS"
CLK_TCK=$(getconf CLK_TCK)
say() { echo "$@" >&2; }

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
    say "installing mosquitto (Debian package)"
    apt-get update -qq && apt-get install -y -qq mosquitto >/dev/null
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cargo build --release --bin tern >&2
TERN=target/release/tern

BROKER_PID=""
trap '[ -n "$BROKER_PID" ] && kill $BROKER_PID 2>/dev/null; true' EXIT

port_open() { python3 -c "import socket,sys; s=socket.socket(); s.settimeout(0.2); sys.exit(s.connect_ex(('127.0.0.1',$PORT)))"; }
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12 + $13}'; }
hwm_kb() { awk '$1 == "VmHWM:" {print $2}' "/proc/$1/status"; }

# One broker configuration: $1 name; the config file is $OUT/conf/$1.*
start() { # $1 config name, $2 log name (default: the config name)
    local name="$1" log="$OUT/logs/${2:-$1}.log"
    if port_open; then say "port $PORT is in use"; exit 1; fi
    case "$name" in
        mosquitto*) cmd=("$MOSQUITTO" -c "$OUT/conf/$name.conf") ;;
        *) cmd=("$TERN" serve --config "$OUT/conf/$name.toml") ;;
    esac
    echo "${cmd[*]} &" >> "$CMDS"
    "${cmd[@]}" 2>>"$log" >/dev/null &
    BROKER_PID=$!
    for _ in $(seq 600); do
        port_open && return 0
        kill -0 "$BROKER_PID" 2>/dev/null || { say "$name did not start:"; cat "$log" >&2; exit 1; }
        sleep 0.05
    done
    say "$name did not open its port"; exit 1
}
stop() { kill "$BROKER_PID" 2>/dev/null || true; wait "$BROKER_PID" 2>/dev/null || true; BROKER_PID=""; }

write_conf() { # $1 name, $2 persistence (true/false), $3 tern durability
    local dir="$OUT/data-$1"
    rm -rf "$dir"; mkdir -p "$dir"
    case "$1" in
        mosquitto*)
            {
                echo "listener $PORT 127.0.0.1"; echo "allow_anonymous true"
                echo "max_inflight_messages 100"; echo "max_queued_messages 1000000"
                echo "persistence $2"; echo "persistence_location $dir/"
                echo "log_dest stderr"; echo "log_type error"; echo "log_type warning"
                if [ "$(id -u)" -eq 0 ]; then echo "user root"; fi
            } > "$OUT/conf/$1.conf" ;;
        *)
            {
                echo "bind = \"127.0.0.1:$PORT\""; echo "max_queued_messages = 1000000"
                echo "max_queued_bytes = 0"; echo "persistence = $2"
                echo "data_dir = \"$dir\""; echo "durability = \"$3\""
            } > "$OUT/conf/$1.toml" ;;
    esac
}

CONFIGS=(tern-memory tern-fsync tern-os mosquitto-memory mosquitto-persistence)
write_conf tern-memory false fsync
write_conf tern-fsync true fsync
write_conf tern-os true os
write_conf mosquitto-memory false -
write_conf mosquitto-persistence true -

BENCH=(p2p -n 16 -q 1 -w 100 --session-expiry 3600 -d "$DURATION" --warmup "$WARMUP" --drain 2)
for name in "${CONFIGS[@]}"; do
    say "=== $name"
    start "$name"
    c0=$(cpu_ticks "$BROKER_PID")
    echo "$TERN bench ${BENCH[*]} -p $PORT --json --quiet" >> "$CMDS"
    "$TERN" bench "${BENCH[@]}" -p "$PORT" --json --quiet > "$OUT/runs/$name.bench.json"
    c1=$(cpu_ticks "$BROKER_PID")
    hwm=$(hwm_kb "$BROKER_PID")
    stop
    # What the data directory holds once every message was acknowledged:
    # shows that acknowledged messages are deleted and their space reused.
    disk=$(du -sk "$OUT/data-$name" | awk '{print $1}')
    echo "{\"cpu_s\": $(( c1 - c0 )).0, \"tck\": $CLK_TCK, \"hwm_kb\": $hwm, \"disk_kb\": $disk}" > "$OUT/runs/$name.broker.json"
done

# Restart time with RESTART_MESSAGES messages queued for an offline persistent session.
restart() { # $1 config name
    local name="$1"
    say "=== restart: $name with $RESTART_MESSAGES queued messages"
    start "$name"
    echo "$TERN sub -p $PORT -i restart-probe -c -x 3600 -q 1 -t 'fill/#' -W 1" >> "$CMDS"
    "$TERN" sub -p "$PORT" -i restart-probe -c -x 3600 -q 1 -t 'fill/#' -W 1 >"$OUT/logs/probe-$name.log" 2>&1 || true
    local rate=50000 secs=$(( (RESTART_MESSAGES + 49999) / 50000 ))
    rate=$(( RESTART_MESSAGES / (secs * 4) ))
    echo "$TERN bench pub -P 4 -q 1 -r $rate -t 'fill/%i' -d $secs --warmup 0 --drain 1 -p $PORT --json --quiet" >> "$CMDS"
    "$TERN" bench pub -P 4 -q 1 -r "$rate" -t 'fill/%i' -d "$secs" --warmup 0 --drain 1 -p "$PORT" --json --quiet \
        > "$OUT/runs/restart-$name.fill.json"
    stop
    local t0 t1
    t0=$(date +%s%N)
    start "$name" "restart-$name"
    t1=$(date +%s%N)
    sleep 0.5
    echo "{\"start_ms\": $(( (t1 - t0) / 1000000 ))}" > "$OUT/runs/restart-$name.json"
    stop
}
restart tern-fsync
restart mosquitto-persistence

python3 - "$OUT" "$DURATION" "$WARMUP" <<'EOF' | tee "$OUT/results.md"
import json, re, sys
out, dur, warm = sys.argv[1:]
names = ["tern-memory", "tern-fsync", "tern-os", "mosquitto-memory", "mosquitto-persistence"]
rows = {}
for n in names:
    b = json.load(open(f"{out}/runs/{n}.bench.json"))
    m = json.load(open(f"{out}/runs/{n}.broker.json"))
    cpu = m["cpu_s"] / m["tck"]
    rows[n] = dict(rate=b["delivered_per_sec"], cpu_us=cpu * 1e6 / max(b["received_total"], 1),
                   p50=b["latency_us"]["p50"], p99=b["latency_us"]["p99"], hwm=m["hwm_kb"] / 1024,
                   lost=b["lost"], total=b["received_total"], disk=m["disk_kb"])
print(f"Durable QoS 1: p2p 16 pairs, QoS 1, window 100, persistent sessions; {dur} s measured + {warm} s warm-up\n")
print("| broker | delivered msg/s | broker CPU µs/msg | p50 | p99 | peak RSS | lost | msg/s vs tern-memory | messages | data dir after |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
base = rows["tern-memory"]["rate"]
for n, r in rows.items():
    print(f"| {n} | {r['rate']:,.0f} | {r['cpu_us']:.2f} | {r['p50']/1000:.2f} ms | {r['p99']/1000:.2f} ms "
          f"| {r['hwm']:.1f} MiB | {r['lost']} | {r['rate']/base:.2f}× | {r['total']:,} | {r['disk']} KiB |")
print()
print(f"tern-fsync / tern-memory: **{rows['tern-fsync']['rate']/base:.2f}×** (target ≥ 0.5×); "
      f"tern-fsync / mosquitto-persistence: **{rows['tern-fsync']['rate']/rows['mosquitto-persistence']['rate']:.2f}×**\n")
print("| restart | messages queued | start until accepting | restored (log) |")
print("|---|---:|---:|---|")
for n in ["tern-fsync", "mosquitto-persistence"]:
    fill = json.load(open(f"{out}/runs/restart-{n}.fill.json"))
    start = json.load(open(f"{out}/runs/restart-{n}.json"))["start_ms"]
    log = open(f"{out}/logs/restart-{n}.log", errors="replace").read()
    found = re.findall(r"restored state.*", log)
    print(f"| {n} | {fill['sent_total']:,} | {start} ms | {found[-1][:160] if found else '-'} |")
EOF
