#!/usr/bin/env bash
# Guest -> host TCP throughput of usernet, slirp4netns and pasta, side by side, with iperf3.
#
# Usage: bench/throughput.sh            (BENCH_SECONDS=10 by default, BENCH_MTUS="65520 1500")
#
# Everything runs inside a throwaway user+network namespace (the "world"): the iperf3 server
# listens on the world's 127.0.0.1, each tool's guest reaches it through its gateway alias
# (10.0.2.2 for usernet and slirp4netns, the mapped gateway for pasta). No packet leaves the
# world. Prints one table with each result as a ratio to slirp4netns at the same MTU, plus
# usernet with 1,000 idle connections open, and usernet without its sandbox and seccomp
# filter (the cost of the default hardening).
set -euo pipefail

source "$(dirname "$0")/lib.sh"
here=$bench_dir
seconds=${BENCH_SECONDS:-10}
mtus=${BENCH_MTUS:-"65520 1500"}

need_packages iperf3:iperf3 slirp4netns:slirp4netns pasta:passt python3:python3 ip:iproute2
enter_world "$0" "$@"

# ---- inside the world namespace from here on ----
world_network_for_pasta

iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1 &
iperf_pid=$!
python3 "$here/idle_server.py" 127.0.0.1 6000 &
idle_pid=$!
trap 'kill $iperf_pid $idle_pid 2>/dev/null || true' EXIT
sleep 0.5


run_usernet() { # mtu [extra shell before iperf3]
    # shellcheck disable=SC2086 # USERNET_FLAGS is a list of flags
    "$USERNET_BIN" run ${USERNET_FLAGS:-} --mtu "$1" -- sh -c "${2:-} iperf3 -J -c 10.0.2.2 -t $seconds" | gbits
}

run_slirp4netns() { # mtu
    unshare --user --map-root-user --net sleep infinity &
    local ns=$!
    sleep 0.2
    slirp4netns --configure --mtu "$1" "$ns" tap0 >/dev/null 2>&1 &
    local s4=$!
    for _ in $(seq 50); do
        nsenter -t "$ns" -U -n --preserve-credentials ip -o link show tap0 2>/dev/null | grep -q UP && break
        sleep 0.1
    done
    nsenter -t "$ns" -U -n --preserve-credentials iperf3 -J -c 10.0.2.2 -t "$seconds" | gbits
    kill "$s4" "$ns" 2>/dev/null || true
    wait "$s4" "$ns" 2>/dev/null || true
}

run_pasta() { # mtu
    pasta --config-net --mtu "$1" --runas 0:0 -q -- iperf3 -J -c 192.0.2.254 -t "$seconds" 2>/dev/null | gbits
}

declare -A result
for mtu in $mtus; do
    for tool in slirp4netns pasta usernet; do
        echo "measuring $tool at MTU $mtu (${seconds}s)..." >&2
        result[$tool,$mtu]=$("run_$tool" "$mtu" || echo "failed")
    done
done
echo "measuring usernet at MTU 65520 with 1000 idle connections..." >&2
idle="python3 $here/idle_clients.py 10.0.2.2 6000 1000 & sleep 3;"
result[usernet-idle,65520]=$(run_usernet 65520 "$idle" || echo "failed")
echo "measuring usernet at MTU 65520 without sandbox and seccomp..." >&2
result[usernet-unhardened,65520]=$(USERNET_FLAGS="--sandbox=false --seccomp=false" run_usernet 65520 || echo "failed")


echo
echo "guest -> host TCP, iperf3 ${seconds}s, one stream (Gbit/s; ratio to slirp4netns at the same MTU)"
printf '%-34s %8s %10s %12s\n' "tool" "MTU" "Gbit/s" "vs slirp4netns"
for mtu in $mtus; do
    for tool in slirp4netns pasta usernet; do
        v=${result[$tool,$mtu]}
        printf '%-34s %8s %10s %12s\n' "$tool" "$mtu" "$v" "$(ratio "$v" "${result[slirp4netns,$mtu]}")"
    done
done
v=${result[usernet-idle,65520]}
base=${result[slirp4netns,65520]:-}
printf '%-34s %8s %10s %12s\n' "usernet, 1000 idle connections" 65520 "$v" "$(ratio "$v" "${base:-0}")"
u=${result[usernet-unhardened,65520]}
printf '%-34s %8s %10s %12s\n' "usernet, --sandbox/--seccomp=false" 65520 "$u" "$(ratio "$u" "${base:-0}")"
if [ -n "${result[usernet,65520]:-}" ]; then
    echo "usernet with 1000 idle connections / without: $(ratio "$v" "${result[usernet,65520]}")"
    echo "usernet with sandbox and seccomp (the default) / without: $(ratio "${result[usernet,65520]}" "$u")"
fi
