#!/usr/bin/env bash
# Host -> child TCP throughput through published ports: usernet's builtin port driver (as
# `usernet run -p` and as rootlesskit --net=builtin) and its stack driver (`usernet run
# --port-driver stack`, and rootlesskit's --port-driver=slirp4netns under usernet), beside
# rootlesskit's builtin driver (Debian rootlesskit 1.1, with slirp4netns), slirp4netns's own
# API forward (add_hostfwd), the same forward through usernet invoked as slirp4netns, and the
# kernel's own path (a veth pair into a namespace, no forwarding) as the reference, with
# iperf3, in one run.
#
# Usage: bench/inbound.sh               (BENCH_SECONDS=10 by default)
#
# Everything runs inside a throwaway user+network+mount namespace: the iperf3 client connects
# to the world's 127.0.0.1, the server runs inside each tool's namespace. rootlesskit needs
# subordinate ids, which the world can only provide when this script runs as root.
set -euo pipefail

source "$(dirname "$0")/lib.sh"
seconds=${BENCH_SECONDS:-10}

need_packages iperf3:iperf3 slirp4netns:slirp4netns rootlesskit:rootlesskit python3:python3 ip:iproute2
enter_world "$0" "$@"

# ---- inside the world namespace from here on ----
[ -n "${BENCH_TRACE:-}" ] && set -x
ip link set lo up
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Wait until the published port reaches a listening iperf3 inside (a published port accepts
# before the server inside listens, so ask iperf3 itself).
wait_iperf() { # port
    for _ in $(seq 100); do
        timeout 5 iperf3 -c 127.0.0.1 -p "$1" -n 1K >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

client() { # port
    timeout $((seconds + 20)) iperf3 -J -c 127.0.0.1 -p "$1" -t "$seconds" | gbits
}

# The kernel's path: the client in the world, the server in a namespace behind a veth pair.
run_veth() {
    unshare --net sleep infinity &
    local ns=$!
    sleep 0.2
    ip link add vb0 mtu 65520 type veth peer name vb1 mtu 65520 netns "$ns"
    ip addr add 10.99.0.1/24 dev vb0
    ip link set vb0 up
    nsenter -t "$ns" -n sh -c "ip link set lo up && ip addr add 10.99.0.2/24 dev vb1 && ip link set vb1 up"
    nsenter -t "$ns" -n iperf3 -s -B 10.99.0.2 -p 5201 >/dev/null 2>&1 &
    local server=$!
    sleep 0.3
    timeout $((seconds + 20)) iperf3 -J -c 10.99.0.2 -p 5201 -t "$seconds" | gbits
    kill "$server" "$ns" 2>/dev/null || true
    wait "$server" "$ns" 2>/dev/null || true
    ip link del vb0 2>/dev/null || true
}

run_usernet_rootlesskit() {
    ln -sf "$USERNET_BIN" "$tmp/rootlesskit"
    "$tmp/rootlesskit" --net=builtin --mtu=65520 --port-driver=builtin -p 127.0.0.1:5305:5201/tcp \
        -- iperf3 -s >/dev/null 2>&1 &
    local pid=$!
    wait_iperf 5305 && client 5305 || echo failed
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_usernet() {
    "$USERNET_BIN" run -p 127.0.0.1:5301:5201 -- iperf3 -s >/dev/null 2>&1 &
    local pid=$!
    wait_iperf 5301 && client 5301 || echo failed
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

# The same, through usernet's own stack instead of a socket opened inside.
run_usernet_stack() {
    "$USERNET_BIN" run --port-driver stack -p 127.0.0.1:5306:5201 -- iperf3 -s >/dev/null 2>&1 &
    local pid=$!
    wait_iperf 5306 && client 5306 || echo failed
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

# rootlesskit's slirp4netns port driver, served by usernet's stack.
run_usernet_rootlesskit_stack() {
    ln -sf "$USERNET_BIN" "$tmp/rootlesskit"
    "$tmp/rootlesskit" --net=slirp4netns --mtu=65520 --port-driver=slirp4netns \
        -p 127.0.0.1:5307:10.0.2.100:5201/tcp -- iperf3 -s >/dev/null 2>&1 &
    local pid=$!
    wait_iperf 5307 && client 5307 || echo failed
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_rootlesskit() {
    if [ "${USERNET_BENCH_IDS:-}" != many ]; then
        echo "needs-root"
        return
    fi
    printf 'root:100000:65536\n' > "$tmp/subid"
    mount --bind "$tmp/subid" /etc/subuid
    mount --bind "$tmp/subid" /etc/subgid
    rootlesskit --net=slirp4netns --mtu=65520 --port-driver=builtin -p 127.0.0.1:5302:5201/tcp \
        -- iperf3 -s >/dev/null 2>/tmp/rk-bench.log &
    local pid=$!
    wait_iperf 5302 && client 5302 || { echo failed; tail -3 /tmp/rk-bench.log >&2; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
}

run_hostfwd() { # slirp4netns binary, host port
    local sock=$tmp/s4-$2.sock
    unshare --user --map-root-user --net iperf3 -s >/dev/null 2>&1 &
    local ns=$!
    sleep 0.3
    "$1" --configure --mtu 65520 --api-socket "$sock" "$ns" tap0 >/dev/null 2>&1 &
    local s4=$!
    for _ in $(seq 50); do [ -S "$sock" ] && break; sleep 0.1; done
    python3 - "$sock" "$2" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(json.dumps({"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "127.0.0.1",
          "host_port": int(sys.argv[2]), "guest_addr": "", "guest_port": 5201}}).encode())
s.shutdown(socket.SHUT_WR)
reply = s.recv(4096)
if b"error" in reply:
    sys.exit("add_hostfwd failed: %s" % reply)
PY
    wait_iperf "$2" && client "$2" || echo failed
    kill "$s4" "$ns"; wait "$s4" "$ns" 2>/dev/null || true
}

run_slirp4netns() {
    run_hostfwd slirp4netns 5303
}

# usernet's slirp4netns personality: the same API forward, through usernet's stack.
run_usernet_hostfwd() {
    ln -sf "$USERNET_BIN" "$tmp/slirp4netns"
    run_hostfwd "$tmp/slirp4netns" 5304
}

declare -A result
for tool in veth rootlesskit slirp4netns usernet_hostfwd usernet_rootlesskit usernet \
    usernet_rootlesskit_stack usernet_stack; do
    echo "measuring $tool (${seconds}s)..." >&2
    result[$tool]=$("run_$tool")
done

echo
echo "host -> child TCP through a published port, iperf3 ${seconds}s, one stream, MTU 65520 (Gbit/s)"
printf '%-50s %10s %8s %16s\n' "port driver" "Gbit/s" "/veth" "/rootlesskit"
row() { # tool label
    printf '%-50s %10s %8s %16s\n' "$2" "${result[$1]}" "$(ratio "${result[$1]}" "${result[veth]}")" \
        "$(ratio "${result[$1]}" "${result[rootlesskit]}")"
}
row veth "veth pair, no forwarding (the kernel's path)"
row rootlesskit "rootlesskit 1.1 builtin (slirp4netns)"
row slirp4netns "slirp4netns add_hostfwd"
row usernet_hostfwd "usernet as slirp4netns, add_hostfwd"
row usernet_rootlesskit "usernet as rootlesskit --net=builtin"
row usernet "usernet run -p (builtin, splice)"
row usernet_rootlesskit_stack "usernet as rootlesskit --port-driver=slirp4netns"
row usernet_stack "usernet run --port-driver stack -p"
