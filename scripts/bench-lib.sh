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

# Builds $1/split.so, an LD_PRELOAD shim for `tern bench`, which has one
# --host/--port: it opens every subscriber before any publisher, and the shim
# sends the first SPLIT_FIRST connect() calls to 127.0.0.1:SPLIT_PORT to port
# SPLIT_TO instead (subscribers on one broker, publishers on another). Needs gcc.
build_split_shim() {
    cat >"$1/split.c" <<'EOF'
#define _GNU_SOURCE
#include <dlfcn.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static long counter;

int connect(int fd, const struct sockaddr *addr, socklen_t len) {
    static int (*real)(int, const struct sockaddr *, socklen_t);
    if (!real) real = (int (*)(int, const struct sockaddr *, socklen_t))dlsym(RTLD_NEXT, "connect");
    const char *port = getenv("SPLIT_PORT"), *to = getenv("SPLIT_TO"), *first = getenv("SPLIT_FIRST");
    if (port && to && first && addr && addr->sa_family == AF_INET && len >= sizeof(struct sockaddr_in)) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)addr;
        if (ntohs(in->sin_port) == atoi(port) && __atomic_fetch_add(&counter, 1, __ATOMIC_SEQ_CST) < atol(first)) {
            struct sockaddr_in moved;
            memcpy(&moved, in, sizeof moved);
            moved.sin_port = htons((unsigned short)atoi(to));
            return real(fd, (const struct sockaddr *)&moved, sizeof moved);
        }
    }
    return real(fd, addr, len);
}
EOF
    run_logged gcc -O2 -shared -fPIC -o "$1/split.so" "$1/split.c" -ldl
}
