#!/usr/bin/env python3
"""The guest's side of the capture (runs inside `usernet run`, tcpdump on tap0 watching):
DHCP, ARP, pings (one fragmented), TCP connections to each of the world's servers (data,
half-close, FIN, RST, refused, unreachable), UDP (echo, DNS queries, a fragmented datagram,
closed ports), DNS over TCP, published ports (so the parent sends .bp.sock requests), the
REST API through `usernet ports`, rootlessctl and curl; then the same over IPv6 (usernet runs
with --ipv6): neighbour and router solicitations, pings, TCP, UDP and DNS."""
import os
import socket
import struct
import subprocess
import threading
import time

GW, DNS, REMOTE = "10.0.2.2", "10.0.2.3", "198.18.0.1"
GW6, DNS6, REMOTE6 = "fd00::2", "fd00::3", "2001:2::1"


def family(addr):
    return socket.AF_INET6 if ":" in addr[0] else socket.AF_INET


def sh(*cmd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    time.sleep(0.2)


def tcp(addr, send=b"", shut=True, read=True, rst=False, timeout=2.0, limit=1 << 20):
    print("+ tcp", addr, len(send), flush=True)
    s = socket.socket(family(addr))
    s.settimeout(timeout)
    try:
        s.connect(addr)
        if send:
            s.sendall(send)
        if shut:
            s.shutdown(socket.SHUT_WR)
        got = 0
        while read and got < limit:
            d = s.recv(65536)
            if not d:
                break
            got += len(d)
    except OSError as e:
        print("  ", e, flush=True)
    if rst:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    time.sleep(0.2)


def dns_query(name, qtype=1, txid=0x1234, rd=True):
    q = struct.pack(">HHHHHH", txid, 0x0100 if rd else 0, 1, 0, 0, 0)
    for label in name.split("."):
        q += bytes([len(label)]) + label.encode()
    return q + b"\0" + struct.pack(">HH", qtype, 1)


def udp(addr, payload, wait=1.0):
    print("+ udp", addr, len(payload), flush=True)
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    s.settimeout(wait)
    try:
        s.sendto(payload, addr)
        s.recvfrom(65536)
    except OSError as e:
        print("  ", e, flush=True)
    s.close()
    time.sleep(0.1)


def serve(port):
    """A listener inside for the published ports (TCP echo on port, UDP echo on port)."""
    t = socket.socket()
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind(("0.0.0.0", port))
    t.listen(8)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("0.0.0.0", port))

    def tloop():
        while True:
            c, _ = t.accept()
            with c:
                while d := c.recv(65536):
                    c.sendall(d)

    def uloop():
        while True:
            d, p = u.recvfrom(65536)
            u.sendto(d, p)

    threading.Thread(target=tloop, daemon=True).start()
    threading.Thread(target=uloop, daemon=True).start()


# Link layer and DHCP.
sh("busybox", "udhcpc", "-i", "tap0", "-n", "-q", "-f", "-t", "3", "-s", "/bin/true")
sh("busybox", "arping", "-c", "1", "-w", "1", "-I", "tap0", GW)
sh("busybox", "arping", "-c", "1", "-w", "1", "-I", "tap0", DNS)
sh("busybox", "arping", "-D", "-c", "1", "-w", "1", "-I", "tap0", "10.0.2.100")
sh("busybox", "arping", "-U", "-c", "1", "-w", "1", "-I", "tap0", "10.0.2.100")

# ICMP echo, one of them fragmented (3000 bytes at MTU 1500).
sh("busybox", "ping", "-c", "2", "-W", "1", GW)
sh("busybox", "ping", "-c", "1", "-W", "1", DNS)
sh("busybox", "ping", "-c", "1", "-W", "1", REMOTE)
sh("busybox", "ping", "-c", "1", "-W", "1", "-s", "3000", GW)
sh("busybox", "ping", "-c", "1", "-W", "1", "203.0.113.5")
sh("busybox", "ping", "-c", "1", "-W", "1", "10.0.2.50")

# TCP.
tcp((GW, 7), b"hello, echo\n")
tcp((REMOTE, 7), b"x" * 3000)
tcp((GW, 9), bytes(range(256)) * 256, read=True)
tcp((GW, 13))
tcp((GW, 19), shut=False, limit=20000, rst=True)
tcp((REMOTE, 19), shut=False, read=True)
tcp((GW, 5), b"reset me")
tcp((GW, 1))
tcp((DNS, 80))
tcp(("203.0.113.5", 80), timeout=1.0)
q = dns_query("test.example", txid=0x2222)
tcp((DNS, 53), struct.pack(">H", len(q)) + q)

# UDP and DNS.
udp((GW, 7), b"udp echo")
udp((REMOTE, 7), b"remote udp echo")
udp((GW, 7), b"F" * 3000)
udp((GW, 9), b"discarded")
udp((GW, 1), b"closed port")
udp((DNS, 54), b"not dns")
udp(("203.0.113.5", 53), b"unreachable")
udp((DNS, 53), dns_query("test.example", txid=0x1000))
udp((DNS, 53), dns_query("test.example", qtype=28, txid=0x1001))
udp((DNS, 53), dns_query("big.example", txid=0x1002))
udp((DNS, 53), dns_query("nonexistent.example", txid=0x1003))
udp((DNS, 53), dns_query("test.example", qtype=16, txid=0x1004, rd=False))
udp((DNS, 53), b"\x12\x34\x01\x00\x00\x01")

# Published ports: the parent asks the child over .bp.sock for each connection.
serve(80)
time.sleep(0.3)
tcp((GW, 8080), b"through the port driver\n")
udp((GW, 8053), b"udp through the port driver")

# The REST API (requests land in the parent's api.sock).
state = os.environ["USERNET_STATE_DIR"]
api = os.path.join(state, "api.sock")
sh("usernet", "info")
sh("usernet", "ports", "list", "--json")
sh("usernet", "ports", "add", "8081:81", "127.0.0.1:8054:54/udp")
sh("usernet", "ports", "list")
sh("usernet", "ports", "remove", "3")
sh("rootlessctl", "--socket", api, "info")
sh("rootlessctl", "--socket", api, "list-ports")
sh("rootlessctl", "--socket", api, "add-ports", "127.0.0.1:8082:82/tcp")
sh("rootlessctl", "--socket", api, "remove-ports", "5")
sh("curl", "-s", "--unix-socket", api, "http://rootlesskit/v1/nonexistent")
sh("curl", "-s", "-X", "PUT", "--unix-socket", api, "http://rootlesskit/v1/ports")
sh("curl", "-s", "-X", "POST", "-H", "Transfer-Encoding: chunked", "-d", "{}", "--unix-socket", api,
   "http://rootlesskit/v1/ports")
sh("curl", "-s", "-X", "DELETE", "--unix-socket", api, "http://rootlesskit/v1/ports/abc")
sh("usernet", "flows", "--json")
sh("usernet", "stats", "--json")
# IPv6. The kernel's own traffic on link-up (duplicate address detection, multicast listener
# reports) is in the capture already; solicit our neighbours and the router explicitly.
def router_solicit():
    print("+ router solicitation", flush=True)
    s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
    mac = open("/sys/class/net/tap0/address").read().strip()
    option = bytes([1, 1]) + bytes.fromhex(mac.replace(":", ""))
    index = socket.if_nametoindex("tap0")
    s.sendto(bytes([133, 0, 0, 0, 0, 0, 0, 0]) + option, ("ff02::2", 0, 0, index))
    s.close()
    time.sleep(0.2)


router_solicit()
sh("ip", "-6", "neigh", "flush", "dev", "tap0")
sh("busybox", "ping", "-6", "-c", "2", "-W", "1", GW6)
sh("busybox", "ping", "-6", "-c", "1", "-W", "1", "-I", "tap0", "fe80::2")
sh("busybox", "ping", "-6", "-c", "1", "-W", "1", DNS6)
sh("busybox", "ping", "-6", "-c", "1", "-W", "1", REMOTE6)
sh("busybox", "ping", "-6", "-c", "1", "-W", "1", "2001:db8::5")
sh("busybox", "ping", "-6", "-c", "1", "-W", "1", "fd00::50")
tcp((GW6, 7), b"hello, echo over IPv6\n")
tcp((REMOTE6, 7), b"y" * 3000)
tcp((REMOTE6, 19), shut=False, limit=20000, rst=True)
tcp((GW6, 5), b"reset me")
tcp((GW6, 1))
tcp((DNS6, 80))
tcp(("2001:db8::5", 80), timeout=1.0)
q = dns_query("test.example", qtype=28, txid=0x2223)
tcp((DNS6, 53), struct.pack(">H", len(q)) + q)
udp((GW6, 7), b"udp echo over IPv6")
udp((REMOTE6, 7), b"remote udp echo over IPv6")
udp((GW6, 1), b"closed port")
udp((DNS6, 54), b"not dns")
udp(("2001:db8::5", 53), b"unreachable")
udp((DNS6, 53), dns_query("test.example", qtype=28, txid=0x1010))
udp((DNS6, 53), dns_query("big.example", txid=0x1011))
print("guest done", flush=True)
