#!/usr/bin/env bash
# TCP throughput, both directions, of the kernel's own veth path, slirp4netns, pasta,
# rootlesskit 1.1 with slirp4netns, usernet as rootlesskit --net=builtin, and usernet run,
# side by side with iperf3, at MTU 65520 and 1500.
#
# Usage: bench/throughput.sh   (BENCH_SECONDS=10 by default, BENCH_MTUS="65520 1500",
#                               BENCH_TOOLS to measure a subset, e.g. "veth usernet")
#
# Everything runs inside a throwaway user+network+mount namespace (the "world"): the iperf3
# server listens on the world's 127.0.0.1, each tool's guest reaches it through its gateway
# alias (10.0.2.2 for usernet, slirp4netns and rootlesskit, the mapped gateway for pasta).
# The reference row is the kernel's path: a veth pair between the world and a namespace of
# its own, the client in that namespace, at the same MTU. "guest->host" is the iperf3 client
# in the guest sending; "host->guest" is the same connection with -R (the server sends).
# No packet leaves the world. One table: each result as a ratio to veth and to slirp4netns at
# the same MTU and direction; then usernet with 1,000 idle connections open, usernet
# without its sandbox and seccomp filter (the cost of the default hardening), with --pcap
# capturing every frame, and with `usernet flows --watch=1` reading its flow table.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
here=$bench_dir
seconds=${BENCH_SECONDS:-10}
mtus=${BENCH_MTUS:-"65520 1500"}
tools=${BENCH_TOOLS:-"veth slirp4netns pasta rootlesskit usernet_rootlesskit usernet usernet_rings"}

need_packages iperf3:iperf3 slirp4netns:slirp4netns pasta:passt rootlesskit:rootlesskit python3:python3 ip:iproute2
enter_world "$0" "$@"

# ---- inside the world namespace from here on ----
[ -n "${BENCH_TRACE:-}" ] && set -x
world_network_for_pasta
tmp=$(mktemp -d)

iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1 &
iperf_pid=$!
python3 "$here/idle_server.py" 127.0.0.1 6000 &
idle_pid=$!
trap 'kill $iperf_pid $idle_pid 2>/dev/null || true; rm -rf "$tmp"' EXIT
sleep 0.5

# rootlesskit maps subordinate ids (and so does usernet when they exist): give root some,
# where the world has a million ids.
if [ "${USERNET_BENCH_IDS:-}" = many ]; then
    printf 'root:100000:65536\n' > "$tmp/subid"
    mount --bind "$tmp/subid" /etc/subuid
    mount --bind "$tmp/subid" /etc/subgid
fi
ln -s "$USERNET_BIN" "$tmp/rootlesskit"

iperf_client() { # server direction(-R or empty)
    echo "iperf3 -J -c $1 -t $seconds $2"
}

run_veth() { # mtu direction
    unshare --net sleep infinity &
    local ns=$!
    sleep 0.2
    ip link add vb0 mtu "$1" type veth peer name vb1 mtu "$1" netns "$ns"
    ip addr add 10.99.0.1/24 dev vb0
    ip link set vb0 up
    nsenter -t "$ns" -n sh -c "ip link set lo up && ip addr add 10.99.0.2/24 dev vb1 && ip link set vb1 up"
    iperf3 -s -B 10.99.0.1 -p 5202 -1 >/dev/null 2>&1 &
    local server=$!
    sleep 0.3
    nsenter -t "$ns" -n iperf3 -J -c 10.99.0.1 -p 5202 -t "$seconds" $2 | gbits
    kill "$ns" "$server" 2>/dev/null || true
    wait "$ns" "$server" 2>/dev/null || true
    ip link del vb0 2>/dev/null || true
}

run_usernet() { # mtu direction [extra shell before iperf3]
    # shellcheck disable=SC2086 # USERNET_FLAGS is a list of flags
    "$USERNET_BIN" run ${USERNET_FLAGS:-} --mtu "$1" -- sh -c "${3:-} $(iperf_client 10.0.2.2 "$2")" | gbits
}

run_usernet_rings() { # mtu direction: every byte through smoltcp's rings (three copies)
    USERNET_DIRECT=0 run_usernet "$@"
}

run_usernet_rootlesskit() { # mtu direction
    "$tmp/rootlesskit" --net=builtin --mtu="$1" -- $(iperf_client 10.0.2.2 "$2") 2>/dev/null | gbits
}

run_rootlesskit() { # mtu direction
    if [ "${USERNET_BENCH_IDS:-}" != many ]; then
        echo "needs-root"
        return
    fi
    rootlesskit --net=slirp4netns --mtu="$1" -- $(iperf_client 10.0.2.2 "$2") 2>"$tmp/rk.log" | gbits
}

run_slirp4netns() { # mtu direction
    unshare --user --map-root-user --net sleep infinity &
    local ns=$!
    sleep 0.2
    slirp4netns --configure --mtu "$1" "$ns" tap0 >/dev/null 2>&1 &
    local s4=$!
    for _ in $(seq 50); do
        nsenter -t "$ns" -U -n --preserve-credentials ip -o link show tap0 2>/dev/null | grep -q UP && break
        sleep 0.1
    done
    nsenter -t "$ns" -U -n --preserve-credentials $(iperf_client 10.0.2.2 "$2") | gbits
    kill "$s4" "$ns" 2>/dev/null || true
    wait "$s4" "$ns" 2>/dev/null || true
}

run_pasta() { # mtu direction
    pasta --config-net --mtu "$1" --runas 0:0 -q -- $(iperf_client 192.0.2.254 "$2") 2>/dev/null | gbits
}

declare -A result
for mtu in $mtus; do
    for dir in up down; do
        flag=; [ $dir = down ] && flag=-R
        for tool in $tools; do
            echo "measuring $tool at MTU $mtu, $dir (${seconds}s)..." >&2
            result[$tool,$mtu,$dir]=$("run_$tool" "$mtu" "$flag" || echo "failed")
        done
    done
done
if [[ " $tools " == *" usernet "* ]]; then
    echo "measuring usernet at MTU 65520 with 1000 idle connections..." >&2
    idle="python3 $here/idle_clients.py 10.0.2.2 6000 1000 & sleep 3;"
    result[usernet-idle,65520,up]=$(run_usernet 65520 "" "$idle" || echo "failed")
    echo "measuring usernet at MTU 65520 without sandbox and seccomp..." >&2
    result[usernet-unhardened,65520,up]=$(USERNET_FLAGS="--sandbox=false --seccomp=false" run_usernet 65520 "" || echo "failed")
    # The capture's cost while it captures: a cap the run cannot reach (BENCH_PCAP_MAX,
    # 16G; the file goes to $TMPDIR and is removed after).
    echo "measuring usernet at MTU 65520 with --pcap..." >&2
    pcap=$tmp/bench.pcap
    result[usernet-pcap,65520,up]=$(USERNET_FLAGS="--pcap $pcap --pcap-max-bytes ${BENCH_PCAP_MAX:-16G}" run_usernet 65520 "" || echo "failed")
    pcap_bytes=$(stat -c %s "$pcap" 2>/dev/null || echo 0)
    rm -f "$pcap"
    echo "measuring usernet at MTU 65520 with usernet flows --watch=1 reading the flow table..." >&2
    watch="$USERNET_BIN flows --watch=1 >/dev/null 2>&1 &"
    result[usernet-watch,65520,up]=$(run_usernet 65520 "" "$watch" || echo "failed")
fi

declare -A label=(
    [veth]="veth pair (the kernel's path)"
    [slirp4netns]="slirp4netns"
    [pasta]="pasta"
    [rootlesskit]="rootlesskit 1.1 --net=slirp4netns"
    [usernet_rootlesskit]="usernet as rootlesskit --net=builtin"
    [usernet]="usernet run"
    [usernet_rings]="usernet run, USERNET_DIRECT=0 (rings)"
    [usernet-idle]="usernet, 1000 idle connections"
    [usernet-unhardened]="usernet, --sandbox/--seccomp=false"
    [usernet-pcap]="usernet, --pcap (every frame)"
    [usernet-watch]="usernet, usernet flows --watch=1"
)
row() { # tool mtu
    local line
    line=$(printf '%-38s %6s' "${label[$1]}" "$2")
    for dir in up down; do
        local v=${result[$1,$2,$dir]:-}
        if [ -z "$v" ]; then
            line+=$(printf ' %9s %8s %8s' "" "" "")
        else
            line+=$(printf ' %9s %8s %8s' "$v" "$(ratio "$v" "${result[veth,$2,$dir]:-}")" \
                "$(ratio "$v" "${result[slirp4netns,$2,$dir]:-}")")
        fi
    done
    echo "$line"
}

echo
echo "TCP, iperf3 ${seconds}s, one stream (Gbit/s; ratio to veth and to slirp4netns at the same MTU and direction)"
printf '%-38s %6s %9s %8s %8s %9s %8s %8s\n' "path" "MTU" "guest->h" "/veth" "/s4nets" "h->guest" "/veth" "/s4nets"
for mtu in $mtus; do
    for tool in $tools; do
        row "$tool" "$mtu"
    done
done
if [ -n "${result[usernet-idle,65520,up]:-}" ]; then
    row usernet-idle 65520
    row usernet-unhardened 65520
    row usernet-pcap 65520
    row usernet-watch 65520
    echo "usernet with 1000 idle connections / without: $(ratio "${result[usernet-idle,65520,up]}" "${result[usernet,65520,up]:-}")"
    echo "usernet with sandbox and seccomp (the default) / without: $(ratio "${result[usernet,65520,up]:-}" "${result[usernet-unhardened,65520,up]}")"
    echo "usernet with --pcap / without: $(ratio "${result[usernet-pcap,65520,up]}" "${result[usernet,65520,up]:-}") ($((pcap_bytes >> 20)) MiB captured)"
    echo "usernet with usernet flows --watch=1 / without: $(ratio "${result[usernet-watch,65520,up]}" "${result[usernet,65520,up]:-}")"
fi
