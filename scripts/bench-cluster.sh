#!/usr/bin/env bash
# Tern cluster performance, side by side in one run (issue #18, item 7).
#
#   scripts/bench-cluster.sh              # 10 s measured + 2 s warm-up per run (~8 min, plus
#                                         # the waits for a quiet machine, below)
#   scripts/bench-cluster.sh --quick      # 3 s + 1 s, 2,000 failover clients, for trying it
#   scripts/bench-cluster.sh --only p2p-q1,failover   # a subset (ids: fanin-q0 fanin-q1
#                               fanout-q0 fanout-q1 p2p-q0 p2p-q1 failover memory)
#   scripts/bench-cluster.sh --duration 5 --warmup 1 --clients 10000
#
# Starts a 3-node cluster with scripts/cluster.sh (3 nats-server R3, 3 tern
# nodes, HAProxy; its own run directory and ports, below) and a plain
# `tern serve` without a cluster (the baseline), then for each load (fan-in
# 8->1, fan-out 1->64, p2p 64 pairs, at QoS 0 and QoS 1) runs the same
# `tern bench ... --json` four ways, one after the other:
#   single   the plain tern serve (no cluster, no NATS)
#   same     node1's own port: publishers and subscribers on node1
#   cross    subscribers on node2, publishers on node1: every message takes
#            the NATS hop (tern bench has one --host/--port, so a small
#            LD_PRELOAD shim sends its first S connections, the subscribers,
#            which it opens before any publisher, to node2's port)
#   haproxy  HAProxy's port: clients spread over the 3 nodes by leastconn
# reading the CPU time (utime+stime of /proc/PID/stat) of every tern node,
# nats-server and HAProxy (and of the plain tern serve) around each run, and
# the messages NATS carried to and from the nodes (/connz of each server).
# Before each run it waits until the 1-minute load average is below
# BENCH_LOAD_MAX (1.5), for at most BENCH_LOAD_WAIT seconds (300); a run that
# started above it is flagged in the table.
# Then failover: N clients (10,000) with persistent sessions, one QoS 1
# subscription each, through HAProxy (two HAProxy instances with the same
# configuration, half of the clients on each: one HAProxy holds two sockets
# per client and the machine's limit is 20,000 open files per process);
# node2 is SIGKILLed and the time until every client that was on it is
# connected and subscribed again through HAProxy is measured (the clients
# reconnect by themselves: scripts/bench-cluster-failover.py), with when
# HAProxy marked node2 DOWN. The same clients on the plain tern serve, no
# kill, give memory per connection without a cluster.
# Last, memory: CLIENTS/2 persistent sessions connected straight to one fresh
# node (plain, and a cluster node), without a subscription, all with one
# shared filter, each with a filter of its own (one NATS subscription each).
#
# Output: the tables on stdout and in $OUT/results.md, raw JSON per run in
# $OUT/runs/, every command in $OUT/commands.txt ($OUT: target/bench-cluster).
# Needs: python3, gcc, nats-server >= 2.11, haproxy (see scripts/cluster.sh).
#
# Settings (environment): BENCH_CLUSTER_DIR run directory [/tmp/tern-bench-cluster];
# BENCH_CLUSTER_PORT_BASE first of the ports used [27880]: HAProxy +3, nodes
# +4..+6, plain tern serve +7, second HAProxy +8, WebSocket +21..+23, NATS
# clients -458..-456, routes -258..-256, monitoring -58..-56 (27880: 27883,
# 27884-27886, 27887, 27888, 27901-27903, 27422-27424, 27622-27624,
# 27822-27824); BENCH_LOAD_MAX [1.5]; BENCH_LOAD_WAIT [300]; TERN_BIN.
set -euo pipefail

DURATION=10
WARMUP=2
DRAIN=2
CLIENTS=10000
ONLY=""
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) DURATION=3; WARMUP=1; CLIENTS=2000 ;;
        --duration) DURATION="$2"; shift ;;
        --warmup) WARMUP="$2"; shift ;;
        --clients) CLIENTS="$2"; shift ;;
        --only) ONLY="$2"; shift ;;
        -h|--help) sed -n '2,51p' "$0"; exit 0 ;;
        *) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/target/bench-cluster"
RUN_DIR=${BENCH_CLUSTER_DIR:-/tmp/tern-bench-cluster}
BASE=${BENCH_CLUSTER_PORT_BASE:-27880}
LOAD_MAX=${BENCH_LOAD_MAX:-1.5}
LOAD_WAIT=${BENCH_LOAD_WAIT:-300}
HOST=127.0.0.1
FRONT_PORT=$((BASE + 3))
FRONT2_PORT=$((BASE + 8))
SINGLE_PORT=$((BASE + 7))
NODE_PORT=("" $((BASE + 4)) $((BASE + 5)) $((BASE + 6)))
NATS_HTTP=($((BASE - 58)) $((BASE - 57)) $((BASE - 56)))
export TERN_CLUSTER_DIR="$RUN_DIR/cluster"
export TERN_CLUSTER_PORT=$FRONT_PORT
for i in 1 2 3; do
    export "TERN_CLUSTER_NODE${i}_PORT=${NODE_PORT[i]}"
    export "TERN_CLUSTER_NODE${i}_WS_PORT=$((BASE + 20 + i))"
    export "TERN_CLUSTER_NATS${i}_PORT=$((BASE - 459 + i))"
    export "TERN_CLUSTER_NATS${i}_ROUTE_PORT=$((BASE - 259 + i))"
    export "TERN_CLUSTER_NATS${i}_HTTP_PORT=$((BASE - 59 + i))"
done
export TERN_CLUSTER_WAIT=${TERN_CLUSTER_WAIT:-60}

START_TIME=$(date +%s)
rm -rf "$OUT"
mkdir -p "$OUT/runs" "$OUT/logs"
CMDS="$OUT/commands.txt"
: >"$CMDS"

# shellcheck source=scripts/bench-lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/bench-lib.sh"

command -v python3 >/dev/null || { say "python3 is needed"; exit 1; }
command -v gcc >/dev/null || { say "gcc is needed (for the connection-splitting shim)"; exit 1; }
if [ -n "${TERN_BIN:-}" ]; then
    TERN=$TERN_BIN
else
    run_logged cargo build --release --bin tern
    TERN="$ROOT/target/release/tern"
fi
export TERN_BIN=$TERN
ulimit -n "$(ulimit -Hn)"
NOFILE=$(ulimit -n)
CLK_TCK=$(getconf CLK_TCK)

# --- the cluster, the plain node, the shim ----------------------------------------------------
SINGLE_PID=""
HAPROXY2_PID=""
cleanup() {
    [ -n "$HAPROXY2_PID" ] && kill "$HAPROXY2_PID" 2>/dev/null || true
    [ -n "$SINGLE_PID" ] && kill "$SINGLE_PID" 2>/dev/null || true
    "$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
}
trap cleanup EXIT

"$ROOT/scripts/cluster.sh" down >/dev/null 2>&1 || true
rm -rf "$RUN_DIR"
mkdir -p "$RUN_DIR/haproxy2"
declare -A PIDS

# A fresh cluster (empty run directory): scripts/cluster.sh up.
start_cluster() {
    say "=== starting the cluster (scripts/cluster.sh up, run directory $TERN_CLUSTER_DIR)"
    echo "TERN_CLUSTER_DIR=$TERN_CLUSTER_DIR TERN_CLUSTER_PORT=$FRONT_PORT ... scripts/cluster.sh up" >>"$CMDS"
    "$ROOT/scripts/cluster.sh" up >>"$OUT/logs/cluster-up.log" 2>&1 || {
        cat "$OUT/logs/cluster-up.log" >&2
        exit 1
    }
    local name
    for name in node1 node2 node3 nats1 nats2 nats3 haproxy; do
        PIDS[$name]=$(cat "$TERN_CLUSTER_DIR/$name/$name.pid")
    done
}
stop_cluster() {
    "$ROOT/scripts/cluster.sh" down >>"$OUT/logs/cluster-down.log" 2>&1 || true
    rm -rf "$TERN_CLUSTER_DIR"
}

# The baseline: one tern serve with a node's configuration minus [cluster],
# fresh (empty data directory).
start_single() {
    rm -rf "$RUN_DIR/single"
    mkdir -p "$RUN_DIR/single"
    cat >"$RUN_DIR/single/tern.toml" <<EOF
# Written by scripts/bench-cluster.sh: a cluster node's configuration without [cluster].
data_dir = "data"

[[listeners]]
bind = "$HOST:$SINGLE_PORT"
EOF
    say "+ (cd $RUN_DIR/single && $TERN serve --config tern.toml) &"
    echo "(cd $RUN_DIR/single && $TERN serve --config tern.toml) &" >>"$CMDS"
    (cd "$RUN_DIR/single" && NO_COLOR=1 exec "$TERN" serve --config "$RUN_DIR/single/tern.toml") \
        >"$RUN_DIR/single/single.log" 2>&1 &
    SINGLE_PID=$!
    for _ in $(seq 100); do
        grep -q "listening on mqtt://$HOST:$SINGLE_PORT" "$RUN_DIR/single/single.log" && break
        kill -0 "$SINGLE_PID" 2>/dev/null || { cat "$RUN_DIR/single/single.log" >&2; exit 1; }
        sleep 0.1
    done
    PIDS[single]=$SINGLE_PID
}
stop_single() {
    kill "$SINGLE_PID" 2>/dev/null || true
    wait "$SINGLE_PID" 2>/dev/null || true
    SINGLE_PID=""
}

start_cluster
start_single

build_split_shim "$RUN_DIR"

# --- readings -----------------------------------------------------------------------------------

# One JSON object: each process's CPU ticks, NATS's message counters, the load.
snapshot() {
    local args=() name
    for name in "${!PIDS[@]}"; do args+=("$name=${PIDS[$name]}"); done
    python3 - "${NATS_HTTP[*]}" "${args[@]}" <<'EOF'
import json, sys, urllib.request
ports, procs = sys.argv[1].split(), sys.argv[2:]
out = {"cpu_ticks": {}, "nats": {}}
for kv in procs:
    name, pid = kv.split("=")
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out["cpu_ticks"][name] = int(fields[11]) + int(fields[12])
    except OSError:
        out["cpu_ticks"][name] = None
for k, port in enumerate(ports, 1):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/connz?limit=4096", timeout=2) as r:
            conns = json.load(r).get("connections") or []
        out["nats"][f"nats{k}"] = {"in_msgs": sum(c.get("in_msgs", 0) for c in conns),
                                   "out_msgs": sum(c.get("out_msgs", 0) for c in conns),
                                   "in_bytes": sum(c.get("in_bytes", 0) for c in conns),
                                   "out_bytes": sum(c.get("out_bytes", 0) for c in conns)}
    except OSError as e:
        out["nats"][f"nats{k}"] = None
with open("/proc/loadavg") as f:
    out["load1"] = float(f.read().split()[0])
print(json.dumps(out))
EOF
}

# Waits until the 1-minute load average is below LOAD_MAX, for at most LOAD_WAIT s.
# Sets LOADED=1 if it gave up.
wait_quiet() {
    local start=$SECONDS load
    LOADED=0
    while true; do
        load=$(cut -d' ' -f1 /proc/loadavg)
        if python3 -c "import sys; sys.exit(0 if $load < $LOAD_MAX else 1)"; then
            [ $((SECONDS - start)) -gt 0 ] && say "    (waited $((SECONDS - start)) s for load $load < $LOAD_MAX)"
            return 0
        fi
        if [ $((SECONDS - start)) -ge "$LOAD_WAIT" ]; then
            say "    load average still $load after ${LOAD_WAIT} s: measuring anyway, flagged"
            LOADED=1
            return 0
        fi
        sleep 2
    done
}

# --- the throughput runs ------------------------------------------------------------------------
# run_mode ID MODE SUBSCRIBERS BENCH-ARGS...
run_mode() {
    local id=$1 mode=$2 subs=$3
    shift 3
    local port env=() waited_from=$SECONDS
    case "$mode" in
        single) port=$SINGLE_PORT ;;
        same) port=${NODE_PORT[1]} ;;
        cross)
            port=${NODE_PORT[1]}
            env=(env "LD_PRELOAD=$RUN_DIR/split.so" "SPLIT_PORT=${NODE_PORT[1]}" "SPLIT_TO=${NODE_PORT[2]}" "SPLIT_FIRST=$subs")
            ;;
        haproxy) port=$FRONT_PORT ;;
    esac
    say ""
    say "=== $id, $mode"
    wait_quiet
    local waited=$((SECONDS - waited_from)) before after
    before=$(snapshot)
    say "+ ${env[*]} $TERN bench $* -p $port -d $DURATION --warmup $WARMUP --drain $DRAIN --json --quiet"
    echo "${env[*]} $TERN bench $* -p $port -d $DURATION --warmup $WARMUP --drain $DRAIN --json --quiet" >>"$CMDS"
    if ! ${env[@]+"${env[@]}"} "$TERN" bench "$@" -p "$port" -d "$DURATION" --warmup "$WARMUP" \
        --drain "$DRAIN" --json --quiet >"$OUT/runs/$id-$mode.bench.json" 2>"$OUT/logs/$id-$mode.err"; then
        say "    tern bench failed: $(tail -n 3 "$OUT/logs/$id-$mode.err")"
    fi
    after=$(snapshot)
    python3 - "$OUT/runs/$id-$mode.json" "$OUT/runs/$id-$mode.bench.json" "$id" "$mode" \
        "$CLK_TCK" "$before" "$after" "$LOADED" "$waited" <<'EOF'
import json, sys
out, src, sid, mode, tck, before, after, loaded, waited = sys.argv[1:]
try:
    bench = json.load(open(src))
except ValueError:
    bench = None
b, a = json.loads(before), json.loads(after)
cpu = {n: (a["cpu_ticks"][n] - b["cpu_ticks"][n]) / int(tck)
       for n in a["cpu_ticks"] if a["cpu_ticks"][n] is not None and b["cpu_ticks"].get(n) is not None}
nats = {}
for k in ("in_msgs", "out_msgs", "in_bytes", "out_bytes"):
    nats[k] = sum(a["nats"][s][k] - b["nats"][s][k] for s in a["nats"] if a["nats"][s] and b["nats"][s])
json.dump({"id": sid, "mode": mode, "bench": bench, "cpu_s": cpu, "nats": nats,
           "load1_before": b["load1"], "load1_after": a["load1"], "loaded": loaded == "1",
           "waited_s": int(waited)}, open(out, "w"), indent=1)
EOF
    python3 - "$OUT/runs/$id-$mode.json" <<'EOF' >&2
import json, sys
r = json.load(open(sys.argv[1]))
b = r["bench"] or {}
print(f"    {b.get('delivered_per_sec')} msg/s delivered, lost {b.get('lost')}, "
      f"NATS in {r['nats']['in_msgs']} out {r['nats']['out_msgs']}, load {r['load1_before']}")
EOF
}

load_scenario() { # ID SUBSCRIBERS BENCH-ARGS...
    local id=$1 subs=$2
    shift 2
    want "$id" || return 0
    for mode in single same cross haproxy; do
        run_mode "$id" "$mode" "$subs" "$@"
    done
}

say "Tern cluster bench: ${DURATION} s measured + ${WARMUP} s warm-up per run; open files $NOFILE"
load_scenario fanin-q0 1 fanin -P 8 -S 1 -q 0 -w 1000
load_scenario fanin-q1 1 fanin -P 8 -S 1 -q 1 -w 100
load_scenario fanout-q0 64 fanout -P 1 -S 64 -q 0 -w 1000
load_scenario fanout-q1 64 fanout -P 1 -S 64 -q 1 -w 100
load_scenario p2p-q0 64 p2p -n 64 -q 0 -w 100
load_scenario p2p-q1 64 p2p -n 64 -q 1 -w 100

# --- failover -----------------------------------------------------------------------------------
if want failover; then
    say ""
    say "=== failover: $CLIENTS clients through HAProxy, then SIGKILL node2"
    # Fresh processes, so that their memory is not what the runs above left.
    stop_single
    stop_cluster
    start_cluster
    start_single
    # A second HAProxy, the first one's configuration on another port.
    sed -e "s|bind $HOST:$FRONT_PORT|bind $HOST:$FRONT2_PORT|" \
        -e "s|$TERN_CLUSTER_DIR/haproxy/stats.sock|$RUN_DIR/haproxy2/stats.sock|" \
        "$TERN_CLUSTER_DIR/haproxy/haproxy.cfg" >"$RUN_DIR/haproxy2/haproxy.cfg"
    HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
    run_logged "$HAPROXY" -c -q -f "$RUN_DIR/haproxy2/haproxy.cfg"
    "$HAPROXY" -f "$RUN_DIR/haproxy2/haproxy.cfg" >"$RUN_DIR/haproxy2/haproxy2.log" 2>&1 &
    HAPROXY2_PID=$!
    echo "$HAPROXY -f $RUN_DIR/haproxy2/haproxy.cfg &" >>"$CMDS"
    for _ in $(seq 100); do
        [ "$(python3 "$ROOT/scripts/bench-cluster-failover.py" --pool "$RUN_DIR/haproxy2/stats.sock" 2>/dev/null)" = "UP UP UP" ] && break
        sleep 0.2
    done
    for sock in "$TERN_CLUSTER_DIR/haproxy/stats.sock" "$RUN_DIR/haproxy2/stats.sock"; do
        python3 -c "
import socket, sys
s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); s.sendall(b'show info\n')
d = b''
while (c := s.recv(65536)): d += c
print(sys.argv[1] + ': ' + ', '.join(l for l in d.decode().splitlines() if l.split(':')[0] in ('Maxconn', 'Maxsock', 'Ulimit-n')))
" "$sock"
    done | tee "$OUT/runs/haproxy-info.txt" >&2
    pids_arg="node1=${PIDS[node1]},node2=${PIDS[node2]},node3=${PIDS[node3]},nats1=${PIDS[nats1]},nats2=${PIDS[nats2]},nats3=${PIDS[nats3]}"
    # Memory without a cluster: the same clients on the plain node, no kill.
    wait_quiet
    run_logged python3 "$ROOT/scripts/bench-cluster-failover.py" --fronts "$HOST:$SINGLE_PORT" \
        --clients "$CLIENTS" --pids "single=$SINGLE_PID" --prefix fs \
        >"$OUT/runs/memory-single.json" 2>"$OUT/logs/memory-single.err" ||
        say "    failed: $(tail -n 3 "$OUT/logs/memory-single.err")"
    wait_quiet
    echo "$LOADED" >"$OUT/runs/failover.loaded"
    run_logged python3 "$ROOT/scripts/bench-cluster-failover.py" \
        --fronts "$HOST:$FRONT_PORT,$HOST:$FRONT2_PORT" \
        --stats "$TERN_CLUSTER_DIR/haproxy/stats.sock,$RUN_DIR/haproxy2/stats.sock" \
        --clients "$CLIENTS" --kill "node2=${PIDS[node2]}" --pids "$pids_arg" \
        --nats-http "$(IFS=,; echo "${NATS_HTTP[*]}")" \
        >"$OUT/runs/failover.json" 2>"$OUT/logs/failover.err" ||
        say "    failed: $(tail -n 3 "$OUT/logs/failover.err")"
    cat "$OUT/runs/failover.json" >&2 || true
fi

# --- memory per connection: persistent sessions without, with a shared, with their own subscription
if want memory; then
    say ""
    say "=== memory: $((CLIENTS / 2)) persistent sessions on one fresh node, by subscription kind"
    kill "$HAPROXY2_PID" 2>/dev/null || true
    HAPROXY2_PID=""
    stop_single
    stop_cluster
    start_cluster
    n=1
    for kind in none same own; do
        wait_quiet
        start_single
        run_logged python3 "$ROOT/scripts/bench-cluster-failover.py" --fronts "$HOST:$SINGLE_PORT" \
            --clients $((CLIENTS / 2)) --pids "single=$SINGLE_PID" --prefix "ms$kind" --subscribe "$kind" \
            >"$OUT/runs/memory-$kind-single.json" 2>>"$OUT/logs/memory.err" || say "    failed"
        stop_single
        wait_quiet
        # each kind on a node of its own, fresh
        run_logged python3 "$ROOT/scripts/bench-cluster-failover.py" --fronts "$HOST:${NODE_PORT[n]}" \
            --clients $((CLIENTS / 2)) --pids "node$n=${PIDS[node$n]},nats1=${PIDS[nats1]},nats2=${PIDS[nats2]},nats3=${PIDS[nats3]}" \
            --nats-http "$(IFS=,; echo "${NATS_HTTP[*]}")" --prefix "mc$kind" --subscribe "$kind" \
            >"$OUT/runs/memory-$kind-node$n.json" 2>>"$OUT/logs/memory.err" || say "    failed"
        n=$((n + 1))
    done
fi

ELAPSED=$(($(date +%s) - START_TIME))
kill "$HAPROXY2_PID" 2>/dev/null || true
HAPROXY2_PID=""
stop_single
"$ROOT/scripts/cluster.sh" down >>"$OUT/logs/cluster-down.log" 2>&1 || true

# --- the tables ---------------------------------------------------------------------------------
python3 - "$OUT" "$DURATION" "$WARMUP" "$ELAPSED" "$LOAD_MAX" "$(git -C "$ROOT" rev-parse --short HEAD)" <<'EOF' | tee "$OUT/results.md"
import glob, json, os, sys
out, duration, warmup, elapsed, load_max, commit = sys.argv[1:]
runs = {}
for path in glob.glob(os.path.join(out, "runs", "*.json")):
    if path.endswith(".bench.json") or os.path.basename(path).startswith(("failover", "memory")):
        continue
    r = json.load(open(path))
    runs[(r["id"], r["mode"])] = r

LOADS = [
    ("fanin-q0", "fan-in 8→1, QoS 0, -w 1000"),
    ("fanin-q1", "fan-in 8→1, QoS 1, -w 100"),
    ("fanout-q0", "fan-out 1→64, QoS 0, -w 1000"),
    ("fanout-q1", "fan-out 1→64, QoS 1, -w 100"),
    ("p2p-q0", "p2p 64 pairs, QoS 0, -w 100"),
    ("p2p-q1", "p2p 64 pairs, QoS 1, -w 100"),
]
MODES = [("single", "single node"), ("same", "same node (node1)"),
         ("cross", "cross node (node1→node2)"), ("haproxy", "through HAProxy")]

def metrics(r):
    b = r.get("bench") or {}
    m = {}
    n = b.get("received_total") or 0
    cpu = r["cpu_s"]
    m["rate"] = b.get("delivered_per_sec")
    if n:
        tern = sum(v for k, v in cpu.items() if k.startswith("node")) + cpu.get("single", 0)
        nats = sum(v for k, v in cpu.items() if k.startswith("nats"))
        m["tern"] = tern * 1e6 / n
        m["nats"] = nats * 1e6 / n
        m["hap"] = cpu.get("haproxy", 0) * 1e6 / n
        m["total"] = m["tern"] + m["nats"] + m["hap"]
        m["per_node"] = {k: v * 1e6 / n for k, v in cpu.items() if k.startswith("node") and v > 0.05}
    lat = b.get("latency_us") or {}
    m["p50"], m["p99"] = lat.get("p50"), lat.get("p99")
    m["lost"] = b.get("lost_percent")
    sent = b.get("sent_total") or 0
    m["copies"] = r["nats"]["out_msgs"] / sent if sent else None
    m["published"] = r["nats"]["in_msgs"] / sent if sent else None
    m["loaded"] = r.get("loaded")
    m["load1"] = r.get("load1_before")
    m["error"] = b.get("error")
    return m

def fmt(v, kind):
    if v is None:
        return "–"
    if kind == "rate":
        return f"{v:,.0f}"
    if kind in ("tern", "nats", "hap", "total"):
        return f"{v:.2f}"
    if kind in ("p50", "p99"):
        return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"
    if kind == "lost":
        return f"{v:.2f} %"
    if kind in ("copies", "published"):
        return f"{v:.2f}"
    return str(v)

lines = []
p = lines.append
p(f"Tern cluster bench at {commit}: {duration} s measured + {warmup} s warm-up per run; "
  f"script took {int(elapsed) // 60} min {int(elapsed) % 60} s")
p("")
p("| load | where | delivered msg/s | Tern CPU µs/msg | NATS CPU µs/msg | HAProxy CPU µs/msg | p50 | p99 | lost | NATS in / msg | NATS out / msg |")
p("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
keys = ["rate", "tern", "nats", "hap", "p50", "p99", "lost", "published", "copies"]
flagged = []
for sid, label in LOADS:
    for mode, mlabel in MODES:
        r = runs.get((sid, mode))
        if not r:
            continue
        m = metrics(r)
        mark = " ⚠" if m["loaded"] else ""
        if m["loaded"]:
            flagged.append(f"{label}, {mlabel} (load {m['load1']})")
        hap = m.get("hap") if mode == "haproxy" else None
        vals = [fmt(m.get(k), k) if k != "hap" else fmt(hap, "hap") for k in keys]
        p(f"| {label} | {mlabel}{mark} | " + " | ".join(vals) + " |")
p("")
p("Ratios to the single node in the same run (msg/s: higher is better; CPU: Tern + NATS "
  "(+ HAProxy through it) per delivered message, lower is better):")
p("")
p("| load | same/single msg/s | cross/single msg/s | HAProxy/single msg/s | same/single CPU | cross/single CPU | HAProxy/single CPU | cross/single p99 |")
p("|---|---:|---:|---:|---:|---:|---:|---:|")
for sid, label in LOADS:
    ms = {mode: metrics(runs[(sid, mode)]) for mode, _ in MODES if (sid, mode) in runs}
    s = ms.get("single")
    if not s:
        continue
    def rr(mode, k):
        m = ms.get(mode)
        if not m or m.get(k) is None or not s.get(k):
            return "–"
        return f"**{m[k] / s[k]:.2f}×**"
    p(f"| {label} | {rr('same', 'rate')} | {rr('cross', 'rate')} | {rr('haproxy', 'rate')} | "
      f"{rr('same', 'total')} | {rr('cross', 'total')} | {rr('haproxy', 'total')} | {rr('cross', 'p99')} |")
p("")
p("Per node CPU in the cross-node runs (µs per delivered message; node1 holds the publishers, node2 the subscribers):")
p("")
p("| load | node1 | node2 | node3 | NATS (3 servers) | all |")
p("|---|---:|---:|---:|---:|---:|")
for sid, label in LOADS:
    r = runs.get((sid, "cross"))
    if not r:
        continue
    m = metrics(r)
    n = (r.get("bench") or {}).get("received_total") or 0
    if not n:
        continue
    per = {k: r["cpu_s"].get(k, 0) * 1e6 / n for k in ("node1", "node2", "node3")}
    p(f"| {label} | {per['node1']:.2f} | {per['node2']:.2f} | {per['node3']:.2f} | {m['nats']:.2f} | {m['total']:.2f} |")
p("")
p("Tern CPU: all tern processes (the 3 nodes, or the plain node); NATS: the 3 nats-servers; "
  "CPU = utime+stime over the whole `tern bench` run (warm-up and drain included) / every "
  "message delivered in it (`received_total`). NATS in / out per msg: messages the nodes "
  "published to NATS / NATS delivered to the nodes, per message published by tern bench "
  "(out 1.00: every message crossed once).")
if flagged:
    p("")
    p(f"⚠ started with the 1-minute load average still ≥ {load_max} after the wait: " + "; ".join(flagged))
errors = [f"{sid} {mode}: {metrics(r)['error']}" for (sid, mode), r in sorted(runs.items()) if metrics(r)["error"]]
if errors:
    p("")
    p("Errors reported by tern bench: " + "; ".join(errors))

fo_path = os.path.join(out, "runs", "failover.json")
if os.path.exists(fo_path):
    try:
        fo = json.load(open(fo_path))
    except ValueError:
        fo = None
    if fo:
        loaded = open(os.path.join(out, "runs", "failover.loaded")).read().strip() == "1"
        p("")
        p(f"**Failover** ({fo['clients']:,} clients, MQTT 3.1.1 persistent sessions, one QoS 1 "
          f"subscription each, through 2 HAProxy instances; SIGKILL of {fo['killed']})"
          + (" ⚠ under load" if loaded else "") + ":")
        p("")
        p("| measure | value |")
        p("|---|---:|")
        mem = os.path.join(out, "runs", "memory-single.json")
        ms = json.load(open(mem)) if os.path.exists(mem) and os.path.getsize(mem) else None
        single_setup = f" (plain tern serve, directly: {ms['connect_s']} s)" if ms else ""
        p(f"| clients connected (setup, 200 at a time) | {fo['connected']:,} in {fo['connect_s']} s{single_setup} |")
        p(f"| connections on {fo['killed']} at the kill (HAProxy) | {fo['connections_on_killed_node']:,} |")
        for s, t in sorted(fo["haproxy_down_s"].items()):
            p(f"| HAProxy marks {fo['killed']} DOWN ({s}) | {t:.2f} s |")
        p(f"| clients dropped by the kill | {fo['dropped']:,} |")
        p(f"| drops seen by the clients (p50 / max) | {fo['drop_seen_s']['p50']} s / {fo['drop_seen_s']['max']} s |")
        rs = fo["reconnect_s"]
        p(f"| reconnected (CONNACK) p50 / p90 / p99 / max | {rs['p50']} / {rs['p90']} / {rs['p99']} / {rs['max']} s |")
        rb = fo["resubscribed_s"]
        p(f"| subscribed again p50 / p99 / max | {rb['p50']} / {rb['p99']} / {rb['max']} s |")
        p(f"| **every dropped client back (connected + subscribed)** | **{fo['all_back_s']} s** |")
        p(f"| dropped clients back only after 2 s | {fo.get('back_after_2s', '–')} |")
        cl, sl = fo.get("reconnect_connack_latency_s") or {}, fo.get("resubscribe_suback_latency_s") or {}
        p(f"| the successful reconnect's TCP connect → CONNACK, p50 / max | {cl.get('p50')} / {cl.get('max')} s |")
        p(f"| its SUBSCRIBE → SUBACK, p50 / max | {sl.get('p50')} / {sl.get('max')} s |")
        p(f"| reconnect attempts (total / most by one client) | {fo['attempts']['total']:,} / {fo['attempts']['max']} |")
        p(f"| failed attempts by kind | {', '.join(f'{k} {v}' for k, v in fo['reconnect_errors'].items()) or 'none'} |")
        p(f"| session present after reconnecting | {fo['session_present_after']:,} of {fo['reconnected']:,} |")
        p(f"| one message to every client afterwards, received by | {fo['check_received']:,} of {fo['clients']:,} |")
        info = os.path.join(out, "runs", "haproxy-info.txt")
        if os.path.exists(info):
            p("")
            p("HAProxy's limits (`show info`), why two instances: " + "; ".join(
                l.split(": ", 1)[1] for l in open(info).read().splitlines() if ": " in l))
        b, a = fo["before_connect"], fo["after_connect"]
        nodes = [k for k in b["rss_kb"] if k.startswith("node")]
        d_nodes = sum(a["rss_kb"][k] - b["rss_kb"][k] for k in nodes)
        d_nats = {k: a["rss_kb"][k] - b["rss_kb"][k] for k in b["rss_kb"] if k.startswith("nats")}
        subs_b = sum(v or 0 for v in b["nats_subscriptions"].values())
        subs_a = sum(v or 0 for v in a["nats_subscriptions"].values())
        p("")
        p("**Memory per connection** (persistent session + one subscription, RSS after − before "
          f"connecting {fo['connected']:,} clients, settled):")
        p("")
        p("| where | RSS growth | per connection |")
        p("|---|---:|---:|")
        if ms:
            d = ms["after_connect"]["rss_kb"]["single"] - ms["before_connect"]["rss_kb"]["single"]
            p(f"| plain tern serve | {d / 1024:.1f} MiB | {d * 1024 / ms['connected']:,.0f} B |")
        p(f"| 3 tern nodes together | {d_nodes / 1024:.1f} MiB | {d_nodes * 1024 / fo['connected']:,.0f} B |")
        for k, v in sorted(d_nats.items()):
            p(f"| {k} | {v / 1024:.1f} MiB | {v * 1024 / fo['connected']:,.0f} B |")
        p(f"| NATS subscriptions (sum over servers' /varz) | {subs_b:,} → {subs_a:,} | |")
kinds = [("none", "none"), ("same", "one filter shared by all"), ("own", "one filter of its own each")]
mem = {}
for n, (kind, _) in enumerate(kinds, 1):
    for where, f in (("single", f"memory-{kind}-single.json"), ("node", f"memory-{kind}-node{n}.json")):
        path = os.path.join(out, "runs", f)
        if os.path.exists(path) and os.path.getsize(path):
            mem[(kind, where, n)] = json.load(open(path))
if mem:
    p("")
    p("**Memory per persistent session** by subscription kind (RSS after − before connecting the clients "
      "to one fresh node directly, settled; MQTT 3.1.1, clean session 0, QoS 1 subscription):")
    p("")
    p("| subscriptions | clients | plain tern serve | cluster node | NATS subscriptions added, each server | NATS RSS growth per client, each server (mean of 3) |")
    p("|---|---:|---:|---:|---:|---:|")
    for n, (kind, label) in enumerate(kinds, 1):
        sg, nd = mem.get((kind, "single", n)), mem.get((kind, "node", n))
        def per(r, name):
            if not r:
                return None
            b, a = r["before_connect"]["rss_kb"].get(name), r["after_connect"]["rss_kb"].get(name)
            return (a - b) * 1024 / r["connected"] if a is not None and b is not None and r["connected"] else None
        cells = [label, f"{(nd or sg or {}).get('connected', 0):,}"]
        v = per(sg, "single"); cells.append(f"{v:,.0f} B" if v is not None else "–")
        v = per(nd, f"node{n}"); cells.append(f"{v:,.0f} B" if v is not None else "–")
        if nd:
            sb, sa = nd["before_connect"]["nats_subscriptions"], nd["after_connect"]["nats_subscriptions"]
            added = [ (sa[k] or 0) - (sb[k] or 0) for k in sa]
            cells.append(" / ".join(f"{x:,}" for x in added))
            nats = [per(nd, k) for k in ("nats1", "nats2", "nats3")]
            nats = [x for x in nats if x is not None]
            cells.append(f"{sum(nats) / len(nats):,.0f} B" if nats else "–")
        else:
            cells += ["–", "–"]
        p("| " + " | ".join(cells) + " |")
p("")
p(f"Raw JSON: {os.path.join(out, 'runs')}/; commands: {os.path.join(out, 'commands.txt')}")
print("\n".join(lines))
EOF
say ""
say "results: $OUT/results.md (commands: $CMDS)"
