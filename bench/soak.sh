#!/usr/bin/env bash
# Soak test (not in CI): mixed traffic through one usernet for a long while, watching its
# memory and fds.
#
# Usage: bench/soak.sh        (SOAK_MINUTES=10, SOAK_INTERVAL=30 seconds between reports)
#
# Inside a throwaway world namespace (no packet leaves it), `usernet run` carries, round after
# round: an iperf3 upload and download through the gateway (10.0.2.2 -> the world's
# 127.0.0.1), 300 short TCP connections (16 at a time), 200 UDP exchanges each from a new
# socket (so 200 new NAT flows), DNS lookups through the forwarder (to a dnsmasq on the
# world's loopback; a name it knows and one it does not), and pings to the gateway and to a
# world address. usernet's RSS and fd count are printed before the traffic, every
# SOAK_INTERVAL seconds, and once the traffic has stopped and every flow has expired
# (--udp-timeout 10; pings idle out after 60 s). Exits non-zero if any traffic failed, or if
# at the end usernet holds more fds than before (slack SOAK_FD_SLACK, default 0: every flow
# gives its socket back) or more than SOAK_RSS_SLACK_MIB (default 16) MiB more memory than
# before (allocator slack and table capacity; a leak of one flow's rings per connection
# would be gigabytes).
set -euo pipefail

source "$(dirname "$0")/lib.sh"
minutes=${SOAK_MINUTES:-10}
interval=${SOAK_INTERVAL:-30}
fd_slack=${SOAK_FD_SLACK:-0}
rss_slack_mib=${SOAK_RSS_SLACK_MIB:-16}
udp_timeout=10

need_packages iperf3:iperf3 python3:python3 ip:iproute2 dnsmasq:dnsmasq-base busybox:busybox
enter_world "$0" "$@"

# ---- inside the world namespace from here on ----
ulimit -n 65536 2>/dev/null || ulimit -n 4096
ip link set lo up
ip addr add 198.18.0.1/32 dev lo
# usernet relays pings to other addresses through unprivileged ping sockets (for its group,
# which must be mapped in the world's user namespace).
echo "$(id -g) $(id -g)" > /proc/sys/net/ipv4/ping_group_range

work=$(mktemp -d /tmp/usernet-soak.XXXXXX)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat > "$work/servers.py" <<'EOF'
import socket, socketserver, sys, threading

class Pong(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline()
        self.wfile.write(line.replace(b"ping", b"pong", 1))

class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 1024

def udp_echo(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(addr)
    while True:
        data, peer = s.recvfrom(65536)
        s.sendto(data, peer)

host = sys.argv[1]
threading.Thread(target=udp_echo, args=((host, 7001),), daemon=True).start()
Server((host, 7000), Pong).serve_forever()
EOF

cat > "$work/short.py" <<'EOF'
import concurrent.futures, socket, sys

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def one(i):
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"ping %d\n" % i)
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
        return data == b"pong %d\n" % i

with concurrent.futures.ThreadPoolExecutor(16) as ex:
    ok = sum(ex.map(one, range(n)))
sys.exit(0 if ok == n else 1)
EOF

cat > "$work/udp.py" <<'EOF'
import socket, sys

host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
bad = 0
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    msg = b"soak %d" % i
    s.sendto(msg, (host, port))
    try:
        data, _ = s.recvfrom(2048)
        bad += data != msg
    except OSError:
        bad += 1
    s.close()
sys.exit(1 if bad else 0)
EOF

# One round of guest traffic; each failed step adds a line to $D/errors.
cat > "$work/round.sh" <<'EOF'
D=$1
step() { name=$1; shift; "$@" >/dev/null 2>&1 || echo "$name" >> "$D/errors"; }
step iperf3-upload iperf3 -c 10.0.2.2 -p 5201 -t 3
step iperf3-download iperf3 -c 10.0.2.2 -p 5201 -t 3 -R
step short-connections python3 "$D/short.py" 198.18.0.1 7000 300
step udp-flows python3 "$D/udp.py" 198.18.0.1 7001 200
step dns-known sh -c 'getent hosts soak.example | grep -q 198.18.0.42'
step dns-unknown sh -c '! getent hosts missing.example'
step ping-gateway busybox ping -c 3 -i 0.2 -W 2 10.0.2.2
step ping-world busybox ping -c 3 -i 0.2 -W 2 198.18.0.1
echo round >> "$D/rounds"
EOF

cat > "$work/guest.sh" <<'EOF'
D=$1
until [ -e "$D/go" ]; do sleep 0.1; done
while [ ! -e "$D/stop" ]; do sh "$D/round.sh" "$D"; done
touch "$D/stopped"
until [ -e "$D/exit" ]; do sleep 0.2; done
EOF

iperf3 -s -B 127.0.0.1 -p 5201 >/dev/null 2>&1 &
pids+=($!)
python3 "$work/servers.py" 198.18.0.1 &
pids+=($!)
dnsmasq --no-daemon --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
    --listen-address=127.0.0.1 --port=53 --user=root --pid-file="$work/dnsmasq.pid" \
    --host-record=soak.example,198.18.0.42 >/dev/null 2>&1 &
pids+=($!)
sleep 1

# The namespace's resolver is the forwarder; its only upstream is the world's dnsmasq.
"$USERNET_BIN" run --udp-timeout "$udp_timeout" --dns-upstream 127.0.0.1 \
    --state-dir "$work/state" -- sh "$work/guest.sh" "$work" &
usernet=$!
pids+=("$usernet")
for _ in $(seq 100); do [ -e "$work/state/child_pid" ] && break; sleep 0.1; done
[ -e "$work/state/child_pid" ] || { echo "usernet did not start" >&2; exit 1; }
sleep 0.5

rss() { awk '/^VmRSS:/ {print $2}' "/proc/$usernet/status"; }
hwm() { awk '/^VmHWM:/ {print $2}' "/proc/$usernet/status"; }
fds() { find "/proc/$usernet/fd" -mindepth 1 -maxdepth 1 | wc -l; }
count() { [ -e "$1" ] && wc -l < "$1" || echo 0; }
report() { # label
    printf '%-8s %6ss  rss %7s KiB  fds %5s  rounds %4s  errors %s\n' "$1" \
        "$(( $(date +%s) - t0 ))" "$(rss)" "$(fds)" "$(count "$work/rounds")" \
        "$(count "$work/errors")"
}

t0=$(date +%s)
start_rss=$(rss)
start_fds=$(fds)
echo "usernet pid $usernet; soaking for $minutes min, a report every ${interval}s"
report start
touch "$work/go"
deadline=$(( t0 + minutes * 60 ))
while [ "$(date +%s)" -lt "$deadline" ]; do
    left=$(( deadline - $(date +%s) ))
    sleep $(( left < interval ? left : interval ))
    report running
done
touch "$work/stop"
for _ in $(seq 600); do [ -e "$work/stopped" ] && break; sleep 0.1; done
report stopped
# Every flow idles out: UDP after --udp-timeout, ping sockets after 60 s.
for _ in $(seq 90); do
    [ "$(fds)" -le $(( start_fds + fd_slack )) ] && break
    sleep 1
done
end_rss=$(rss)
end_fds=$(fds)
peak=$(hwm)
report end
touch "$work/exit"
status=0
wait "$usernet" || status=$?

errors=$(count "$work/errors")
echo
echo "usernet: rss $start_rss -> $end_rss KiB (peak $peak KiB), fds $start_fds -> $end_fds," \
    "$(count "$work/rounds") rounds, $errors failed steps, exit status $status"
fail=0
if [ "$errors" -gt 0 ]; then
    echo "FAIL: traffic failed: $(sort "$work/errors" | uniq -c | tr -s ' \n' ' ')"
    fail=1
fi
if [ "$status" -ne 0 ]; then
    echo "FAIL: usernet exited with $status"
    fail=1
fi
if [ "$end_fds" -gt $(( start_fds + fd_slack )) ]; then
    echo "FAIL: fds grew from $start_fds to $end_fds (slack $fd_slack)"
    fail=1
fi
if [ "$end_rss" -gt $(( start_rss + rss_slack_mib * 1024 )) ]; then
    echo "FAIL: RSS grew from $start_rss to $end_rss KiB (slack $rss_slack_mib MiB)"
    fail=1
fi
[ "$fail" = 0 ] && echo "OK: no growth beyond the slack"
exit "$fail"
