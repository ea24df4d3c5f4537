# Shared by the benchmark scripts: packages, the usernet build, the throwaway world namespace
# everything runs in, and result formatting. Source it; do not run it.

bench_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(cd "$bench_dir/.." && pwd)

# Install what is missing from Debian (as root), or say what is missing.
need_packages() { # command:package ...
    local missing=()
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
    done
    [ ${#missing[@]} -eq 0 ] && return
    if [ "$(id -u)" = 0 ]; then
        echo "installing ${missing[*]}" >&2
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "missing: ${missing[*]} (install them, or run as root to let this script apt-get them)" >&2
        exit 1
    fi
}

# Whether this process is real root in the initial user namespace (so a world can map a
# million ids).
can_map_many_ids() {
    [ "$(id -u)" = 0 ] && grep -qE '^ +0 +0 +4294967295' /proc/self/uid_map
}

# Run a command in a new user+network+mount namespace with ids 0-999999 mapped one to one
# (can_map_many_ids must hold), then exit with its status.
run_in_many_ids_world() { # [nsenter options] -- command args...
    local opts=()
    while [ "$1" != -- ]; do opts+=("$1"); shift; done
    shift
    unshare --user --net --mount -- sleep infinity &
    holder=$!
    trap 'kill $holder 2>/dev/null' EXIT
    sleep 0.3
    echo "0 0 1000000" > /proc/$holder/uid_map
    echo "0 0 1000000" > /proc/$holder/gid_map
    local rc=0
    nsenter -t $holder -U -n -m "${opts[@]}" -- "$@" || rc=$?
    exit $rc
}

# Re-run the calling script inside a new user+network+mount namespace (the "world"). As real
# root the world maps a million ids (so tools that need subordinate ids work there);
# otherwise only the caller, as root.
enter_world() { # script args...
    [ "${USERNET_BENCH_WORLD:-}" = 1 ] && return
    (cd "$root_dir" && cargo build --release --quiet)
    # Where that build went (cargo honours CARGO_TARGET_DIR, relative to the crate).
    local target=${CARGO_TARGET_DIR:-$root_dir/target}
    case $target in /*) ;; *) target=$root_dir/$target ;; esac
    export USERNET_BENCH_WORLD=1 USERNET_BIN="$target/release/usernet"
    local script
    script=$(realpath "$1")
    shift
    if can_map_many_ids; then
        export USERNET_BENCH_IDS=many
        run_in_many_ids_world -- "$script" "$@"
    fi
    exec unshare --user --map-root-user --net --mount -- "$script" "$@"
}

# Inside the world: many fds, lo up, and the host interface pasta copies its addresses and
# routes from (a veth pair whose both ends stay in this world, default route via 192.0.2.254,
# the gateway pasta maps to the world's loopback).
world_network_for_pasta() {
    ulimit -n 65536 2>/dev/null || ulimit -n 4096
    ip link set lo up
    ip link add bench0 type veth peer name bench1
    ip addr add 192.0.2.1/24 dev bench0
    ip link set bench0 up
    ip link set bench1 up
    ip route add default via 192.0.2.254 dev bench0
}

# iperf3 -J output on stdin -> received Gbit/s.
gbits() {
    python3 -c 'import json,sys
try: print("%.2f" % (json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"]/1e9))
except Exception: print("failed")'
}

# a/b as "1.23x", or "-".
ratio() {
    python3 -c "import sys
try: print('%.2fx' % (float(sys.argv[1]) / float(sys.argv[2])))
except Exception: print('-')" "$1" "$2"
}
