#!/usr/bin/env bash
# Where usernet's datapath spends its time: `perf record -g` of the usernet process during one
# iperf3 transfer, then the top symbols (self time) and the share of the copy routines.
# Run it with USERNET_DIRECT=0 and without to see the third copy (`memmove` from smoltcp's
# rings) come and go.
#
# Usage: bench/profile.sh [up|down|inbound] [MTU]   (default: down 65520; up = guest->host;
#        inbound = a host client through a published port, `usernet run -p`, to iperf3 -s
#        inside: the port driver's splice relay)
# Environment: BENCH_SECONDS (default 6), USERNET_DIRECT, USERNET_OFFLOAD (passed to usernet),
#              PROFILE_TOP (symbols listed, default 25), PROFILE_CALLGRAPH (perf --call-graph,
#              default fp; dwarf finds callers of libc routines), PROFILE_KEEP (copy perf.data there).
# Needs root (perf attaches from outside the world namespace) and linux-perf.
#
# As the other benchmarks, everything moves inside a throwaway user+network namespace: the
# iperf3 server listens on that world's 127.0.0.1, the guest reaches it as 10.0.2.2.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$here/lib.sh"
dir=${1:-down}
mtu=${2:-65520}
seconds=${BENCH_SECONDS:-6}
flag=
[ "$dir" = down ] && flag=-R

if [ "${USERNET_PROFILE_INNER:-}" = 1 ]; then
    # Inside the world: the server, then usernet with the client; our caller attaches perf.
    ip link set lo up
    if [ "$dir" = inbound ]; then
        "$USERNET_BIN" run --mtu "$mtu" -p 127.0.0.1:5301:5201 -- iperf3 -s >/dev/null 2>&1 &
        usernet=$!
        for _ in $(seq 100); do
            timeout 5 iperf3 -c 127.0.0.1 -p 5301 -n 1K >/dev/null 2>&1 && break
            sleep 0.1
        done
        echo "$usernet" >"$PROFILE_PID"
        iperf3 -c 127.0.0.1 -p 5301 -t "$seconds" -f g >"$PROFILE_OUT" 2>&1 || true
        kill "$usernet"
        wait
        exit 0
    fi
    iperf3 -s -B 127.0.0.1 -1 >/dev/null 2>&1 &
    sleep 0.3
    "$USERNET_BIN" run --mtu "$mtu" -- \
        iperf3 -c 10.0.2.2 -t "$seconds" $flag -f g >"$PROFILE_OUT" 2>&1 &
    echo $! >"$PROFILE_PID"
    wait
    exit 0
fi

if [ "$(id -u)" != 0 ]; then
    echo "bench/profile.sh needs root: perf attaches to usernet from outside its namespace" >&2
    exit 1
fi
need_packages perf:linux-perf iperf3:iperf3
(cd "$root_dir" && cargo build --release --quiet)
target=${CARGO_TARGET_DIR:-$root_dir/target}
case $target in /*) ;; *) target=$root_dir/$target ;; esac
tmp=$(mktemp -d)
trap '[ -n "${PROFILE_KEEP:-}" ] && cp "$tmp/perf.data" "$PROFILE_KEEP"; rm -rf "$tmp"' EXIT
export USERNET_BIN=$target/release/usernet USERNET_PROFILE_INNER=1
export PROFILE_PID=$tmp/pid PROFILE_OUT=$tmp/iperf3.out
unshare --user --map-root-user --net --mount -- "$here/profile.sh" "$dir" "$mtu" &
world=$!
for _ in $(seq 100); do [ -s "$PROFILE_PID" ] && break; sleep 0.05; done
sleep 1 # past the handshake and slow start
perf record -q --call-graph "${PROFILE_CALLGRAPH:-fp}" -o "$tmp/perf.data" -p "$(cat "$PROFILE_PID")" -- sleep $((seconds - 2)) \
    >/dev/null 2>&1
wait "$world"
case $dir in
down) what="host->guest" ;;
up) what="guest->host" ;;
*) what="host->guest through a published port (-p)" ;;
esac
echo "usernet run --mtu $mtu, $what," \
    "USERNET_DIRECT=${USERNET_DIRECT:-1} USERNET_OFFLOAD=${USERNET_OFFLOAD:-1}:" \
    "$(grep -E 'receiver' "$PROFILE_OUT" | awk '{print $(NF-2), $(NF-1)}')"
perf report -i "$tmp/perf.data" --no-children --sort sym --stdio >"$tmp/report.txt" 2>/dev/null || true
grep -E '^ +[0-9]' "$tmp/report.txt" | head -n "${PROFILE_TOP:-25}" || true
echo "copy routines (self):"
grep -E '^ +[0-9].*(memmove|memcpy|_copy_to_iter|_copy_from_iter|copy_user)' "$tmp/report.txt" || true
