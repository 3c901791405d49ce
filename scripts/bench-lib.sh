# Helpers shared by the benchmark scripts (scripts/bench-compare.sh,
# scripts/bench-cluster.sh); sourced, not run. They expect $CMDS (the file
# recording every command run) and $ONLY (a comma-separated subset of the
# scenario ids, empty for all).

say() { echo "$@" >&2; }

# Prints and records a command, then runs it.
run_logged() {
    say "+ $*"
    echo "$*" >>"$CMDS"
    "$@"
}

# Whether scenario $1 is to run.
want() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }

# A process's CPU time so far (utime + stime, in clock ticks); nothing if it
# is gone.
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | awk '{print $12 + $13}'; }
