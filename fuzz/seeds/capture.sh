#!/usr/bin/env bash
# Capture real traffic for the fuzz seed corpus, inside a throwaway world namespace
# (unshare --user --map-root-user --net --mount: nothing leaves this machine's loopback).
#
# The world has the same servers as the fuzz targets' simulated host (servers.py) on
# 127.0.0.1, ::1, 198.18.0.1 and 2001:2::1 (on the world's lo), and dnsmasq on 127.0.0.1:53.
# usernet runs there at MTU 1500 with --ipv6, --dns-upstream 127.0.0.1:53 and two published
# ports; inside it,
# tcpdump records tap0 while guest.py makes the traffic (DHCP with busybox udhcpc, ARP, pings
# including a fragmented one, TCP and UDP to every server, DNS over UDP and TCP, published
# ports, the REST API through `usernet ports`, rootlessctl and curl). tcpdump on the world's
# lo records the upstream DNS answers; strace on usernet records the bytes it reads from the
# API sockets and .bp.sock. Then usernet runs as slirp4netns and gets API requests with socat.
#
# Usage: fuzz/seeds/capture.sh [OUTDIR]   (default: /tmp/usernet-capture)
# then:  fuzz/seeds/pcap2corpus.py OUTDIR fuzz/corpus
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
out=$(realpath -m "${1:-${TMPDIR:-/tmp}/usernet-capture}")

if [ "${USERNET_CAPTURE_WORLD:-}" != 1 ]; then
    # shellcheck source=../../bench/lib.sh
    source "$root/bench/lib.sh"
    need_packages tcpdump:tcpdump strace:strace dnsmasq:dnsmasq-base busybox:busybox \
        rootlessctl:rootlesskit curl:curl socat:socat python3:python3 ip:iproute2
    (cd "$root" && cargo build --release --quiet)
    mkdir -p "$out"
    (cd "$out" && rm -f tap0.pcap lo.pcap run.strace slirp.strace dnsmasq.pid slirp.sock slirp4netns)
    export USERNET_CAPTURE_WORLD=1
    # tcpdump drops privileges to its own user, which must exist in the namespace: as real
    # root, map a million ids into the world (as bench/lib.sh does).
    if can_map_many_ids; then
        run_in_many_ids_world --preserve-credentials -- "$here/capture.sh" "$out"
    fi
    echo "capture.sh must run as root (tcpdump needs its user mapped in the world)" >&2
    exit 1
fi

# In the world.
ip link set lo up
ip addr add 198.18.0.1/32 dev lo
ip addr add 2001:2::1/128 dev lo
max=$(awk '{print $2 + $3 - 1; exit}' /proc/self/gid_map)
echo "0 $max" > /proc/sys/net/ipv4/ping_group_range
export PATH="$root/target/release:$PATH"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true' EXIT

python3 "$here/servers.py" & pids+=($!)
records=(--host-record=test.example,198.18.0.42,2001:db8::42)
for i in $(seq 1 40); do records+=("--host-record=big.example,198.18.1.$i"); done
dnsmasq --no-daemon --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
    --listen-address=127.0.0.1 --port=53 --user=root --pid-file="$out/dnsmasq.pid" \
    "${records[@]}" 2>/dev/null & pids+=($!)
tcpdump -i lo -U -s 0 -w "$out/lo.pcap" port 53 2>/dev/null & pids+=($!)
sleep 1

echo "== usernet run, capturing tap0"
trace=(strace -f -qq -e trace=read,recvfrom,recvmsg -e signal=none -xx -s 70000)
"${trace[@]}" -o "$out/run.strace" \
    usernet run --mtu 1500 --ipv6 --dns-upstream 127.0.0.1:53 --sandbox=false --seccomp=false \
    -p 127.0.0.1:8080:80 -p 127.0.0.1:8053:80/udp -- \
    sh -c 'tcpdump -i tap0 -U -s 0 -w "$0/tap0.pcap" 2>/dev/null & t=$!; sleep 1; python3 "$1/guest.py"; sleep 0.5; kill $t; wait $t' \
    "$out" "$here" || echo "usernet run exited with $?"

echo "== usernet as slirp4netns, API requests"
ln -sf "$root/target/release/usernet" "$out/slirp4netns"
unshare --net sleep 120 & target=$!
pids+=($target)
sleep 0.3
"${trace[@]}" -o "$out/slirp.strace" "$out/slirp4netns" -c -a "$out/slirp.sock" "$target" tap0 \
    >/dev/null & pids+=($!)
for _ in $(seq 50); do [ -S "$out/slirp.sock" ] && break; sleep 0.1; done
while IFS= read -r request; do
    printf '%s' "$request" | socat -t 2 - "UNIX-CONNECT:$out/slirp.sock" || true
    echo
done <<'REQUESTS'
{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0", "host_port": 8090, "guest_addr": "10.0.2.100", "guest_port": 80}}
{"execute":"add_hostfwd","arguments":{"proto":"udp","host_port":8091,"guest_port":53}}
{"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": 8092, "guest_port": 22}}
{"execute": "list_hostfwd"}
{"execute": "remove_hostfwd", "arguments": {"id": 2}}
{"execute": "remove_hostfwd", "arguments": {"id": 99}}
{"execute": "add_hostfwd", "arguments": {"proto": "sctp", "host_port": 1, "guest_port": 1}}
{"execute": "bogus"}
{"execute":"list_flows"}
{"execute": "get_stats", "arguments": {}}
REQUESTS
# slirp4netns does not exit with its target (neither does ours, as slirp4netns): stop it.
pkill -f "$out/slirp4netns -c" || true
echo "== captured"
ls -la "$out"
