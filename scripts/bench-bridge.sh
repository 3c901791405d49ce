#!/usr/bin/env bash
# Bridge throughput: Tern's bridge against Mosquitto's own, on the same load (issue #20).
#
#   scripts/bench-bridge.sh                # 10 s measured + 2 s warm-up per run (~4 min)
#   scripts/bench-bridge.sh --quick        # 3 s + 1 s, for trying it
#   scripts/bench-bridge.sh --only fanin-q1,p2p-q1
#
# Each setup is two brokers on loopback, a local one bridging to a remote one with one rule,
# `#` out at the load's QoS (MQTT 3.1.1, each bridge's defaults otherwise):
#   mosquitto        Mosquitto bridging to Mosquitto
#   tern>mosquitto   Tern bridging to the same Mosquitto (the bridging side alone differs)
#   tern             Tern bridging to Tern
# The same `tern bench ... --json` publishes to the local broker and subscribes at the remote
# one (tern bench has one --port: the LD_PRELOAD shim of bench-lib.sh sends its subscribers,
# which it opens first, to the remote port), so every message crosses the bridge. Both brokers
# are in memory (persistence off), with Mosquitto's inflight window raised to Tern's 100. CPU
# is utime+stime of /proc/PID/stat around the run, per message delivered.
# The table goes to stdout and target/bench-bridge/results.md, every command to
# target/bench-bridge/commands.txt. Needs python3, gcc and Mosquitto (installed if missing).
set -euo pipefail

DURATION=10
WARMUP=2
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=3; WARMUP=1 ;;
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
DRAIN=3
LOCAL_PORT=18841
REMOTE_PORT=18842

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/target/bench-bridge"
rm -rf "$OUT"
mkdir -p "$OUT/runs" "$OUT/conf" "$OUT/logs"
CMDS="$OUT/commands.txt"
: > "$CMDS"
TERN="$ROOT/target/release/tern"

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
    say "Mosquitto not found: installing the Debian package"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y mosquitto
fi
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
command -v python3 >/dev/null || { say "python3 is needed"; exit 1; }
command -v gcc >/dev/null || { say "gcc is needed (for the connection-splitting shim)"; exit 1; }
run_logged cargo build --release --bin tern
build_split_shim "$OUT"
CLK_TCK=$(getconf CLK_TCK)

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; PIDS=(); }
trap cleanup EXIT

mosquitto_conf() { # FILE PORT QOS [BRIDGE-TO-PORT]
    {
        echo "listener $2 127.0.0.1"
        echo "allow_anonymous true"
        echo "persistence false"
        echo "max_inflight_messages 100"
        echo "sys_interval 0"
        echo "log_dest stderr"
        echo "log_type error"
        echo "connection_messages false"
        if [ "$(id -u)" -eq 0 ]; then echo "user root"; fi
        if [ -n "${4:-}" ]; then
            echo "connection bench"
            echo "address 127.0.0.1:$4"
            echo "topic # out $3"
            echo "restart_timeout 1"
        fi
    } > "$1"
}

tern_conf() { # FILE PORT QOS [BRIDGE-TO-PORT]
    {
        echo "bind = \"127.0.0.1:$2\""
        echo "persistence = false"
        echo "sys_interval_secs = 0"
        if [ -n "${4:-}" ]; then
            echo "[[bridges]]"
            echo "name = \"bench\""
            echo "addresses = [\"127.0.0.1:$4\"]"
            echo "reconnect_min_ms = 100"
            echo "[[bridges.topics]]"
            echo "pattern = \"#\""
            echo "qos = $3"
        fi
    } > "$1"
}

start() { # KIND NAME PORT QOS [BRIDGE-TO-PORT] -> pid in STARTED
    local kind=$1 name=$2
    if [ "$kind" = mosquitto ]; then
        mosquitto_conf "$OUT/conf/$name.conf" "$3" "$4" "${5:-}"
        echo "$MOSQUITTO -c $OUT/conf/$name.conf" >>"$CMDS"
        "$MOSQUITTO" -c "$OUT/conf/$name.conf" 2>"$OUT/logs/$name.log" &
    else
        tern_conf "$OUT/conf/$name.toml" "$3" "$4" "${5:-}"
        echo "$TERN serve --config $OUT/conf/$name.toml" >>"$CMDS"
        "$TERN" serve --config "$OUT/conf/$name.toml" 2>"$OUT/logs/$name.log" &
    fi
    STARTED=$!
    PIDS+=("$STARTED")
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$3") 2>/dev/null && return 0
        sleep 0.05
    done
    say "$name did not start: $(tail -n 5 "$OUT/logs/$name.log")"
    exit 1
}

# Waits until a message published on the local broker arrives at the remote one.
wait_bridge() {
    "$TERN" sub -p "$REMOTE_PORT" -t 'probe/#' -C 1 -W 15 >/dev/null &
    local sub=$!
    for _ in $(seq 150); do
        kill -0 "$sub" 2>/dev/null || { wait "$sub"; return; }
        "$TERN" pub -p "$LOCAL_PORT" -t probe/up -m 1 >/dev/null 2>&1 || true
        sleep 0.1
    done
    say "the bridge did not come up"; exit 1
}

run() { # ID SETUP QOS SUBSCRIBERS BENCH-ARGS...
    local id=$1 setup=$2 qos=$3 subs=$4
    shift 4
    local local_kind=tern remote_kind=tern
    case "$setup" in
        mosquitto) local_kind=mosquitto; remote_kind=mosquitto ;;
        tern\>mosquitto) remote_kind=mosquitto ;;
    esac
    say ""; say "=== $id, $setup"
    start "$remote_kind" "$id-remote" "$REMOTE_PORT" "$qos"; local remote=$STARTED
    start "$local_kind" "$id-local" "$LOCAL_PORT" "$qos" "$REMOTE_PORT"; local localpid=$STARTED
    wait_bridge
    local l0 r0 l1 r1 file="$OUT/runs/$id-${setup/>/-}.json"
    l0=$(cpu_ticks "$localpid"); r0=$(cpu_ticks "$remote")
    echo "LD_PRELOAD=$OUT/split.so SPLIT_PORT=$LOCAL_PORT SPLIT_TO=$REMOTE_PORT SPLIT_FIRST=$subs $TERN bench $* -V 311 -p $LOCAL_PORT -d $DURATION --warmup $WARMUP --drain $DRAIN --json --quiet" >>"$CMDS"
    LD_PRELOAD="$OUT/split.so" SPLIT_PORT=$LOCAL_PORT SPLIT_TO=$REMOTE_PORT SPLIT_FIRST=$subs \
        "$TERN" bench "$@" -V 311 -p "$LOCAL_PORT" -d "$DURATION" --warmup "$WARMUP" --drain "$DRAIN" \
        --json --quiet >"$file.bench" 2>"$OUT/logs/$id-bench.err" || say "    tern bench failed: $(tail -n 3 "$OUT/logs/$id-bench.err")"
    l1=$(cpu_ticks "$localpid"); r1=$(cpu_ticks "$remote")
    cleanup
    sleep 0.5
    python3 - "$file" "$id" "$setup" "$CLK_TCK" "$l0" "$l1" "$r0" "$r1" <<'EOF'
import json, sys
out, sid, setup, tck, l0, l1, r0, r1 = sys.argv[1:]
try:
    bench = json.load(open(out + ".bench"))
except ValueError:
    bench = None
tck = int(tck)
json.dump({"id": sid, "setup": setup, "bench": bench,
           "local_cpu_s": (int(l1) - int(l0)) / tck, "remote_cpu_s": (int(r1) - int(r0)) / tck},
          open(out, "w"), indent=1)
b = bench or {}
print(f"    {b.get('delivered_per_sec')} msg/s delivered, lost {b.get('lost')}", file=sys.stderr)
EOF
}

scenario() { # ID QOS SUBSCRIBERS BENCH-ARGS...
    local id=$1 qos=$2 subs=$3
    shift 3
    want "$id" || return 0
    for setup in mosquitto "tern>mosquitto" tern; do
        run "$id" "$setup" "$qos" "$subs" "$@"
    done
}

scenario fanin-q0 0 1 fanin -P 8 -S 1 -q 0 -w 1000
scenario fanin-q1 1 1 fanin -P 8 -S 1 -q 1 -w 100
scenario p2p-q1 1 16 p2p -n 16 -q 1 -w 100
scenario p2p-1k-q1 1 16 p2p -n 16 -q 1 -s 1024 -w 100
scenario rate-10k-q1 1 16 p2p -n 16 -q 1 -r 625

python3 - "$OUT" "$(git rev-parse --short HEAD)" "$DURATION" "$WARMUP" <<'EOF' | tee "$OUT/results.md"
import glob, json, os, sys
out, commit, duration, warmup = sys.argv[1:]
runs = [json.load(open(f)) for f in sorted(glob.glob(os.path.join(out, "runs", "*.json")))]
names = {"fanin-q0": "fan-in 8→1, QoS 0, -w 1000", "fanin-q1": "fan-in 8→1, QoS 1, -w 100",
         "p2p-q1": "p2p 16 pairs, QoS 1, -w 100", "p2p-1k-q1": "p2p 16 pairs, 1 KB, QoS 1, -w 100",
         "rate-10k-q1": "p2p 16 pairs, 10,000 msg/s, QoS 1"}
print(f"Bridge throughput, commit {commit}, {duration} s measured after {warmup} s warm-up per run; "
      "publishers on the local broker, subscribers on the remote one, every message over the bridge.\n")
print("| load | bridge | delivered msg/s | × Mosquitto | local CPU µs/msg | remote CPU µs/msg | p50 ms | p99 ms | lost |")
print("|---|---|---|---|---|---|---|---|---|")
for sid, name in names.items():
    rows = {r["setup"]: r for r in runs if r["id"] == sid and r["bench"]}
    base = rows.get("mosquitto", {}).get("bench", {}).get("delivered_per_sec")
    for setup in ("mosquitto", "tern>mosquitto", "tern"):
        r = rows.get(setup)
        if not r:
            continue
        b = r["bench"]
        rate = b["delivered_per_sec"] or 0
        n = max(1, b.get("received") or 0)
        ratio = f"{rate / base:.2f}×" if base else "–"
        lat = b.get("latency_us") or {}
        ms = lambda k: f"{lat[k] / 1000:.1f}" if lat.get(k) is not None else "–"
        label = {"mosquitto": "Mosquitto → Mosquitto", "tern>mosquitto": "Tern → Mosquitto", "tern": "Tern → Tern"}[setup]
        print(f"| {name} | {label} | {rate:,.0f} | {ratio} | {r['local_cpu_s'] * 1e6 / n:.1f} | "
              f"{r['remote_cpu_s'] * 1e6 / n:.1f} | {ms('p50')} | {ms('p99')} | {b.get('lost')} |")
EOF
