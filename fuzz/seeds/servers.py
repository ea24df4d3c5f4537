#!/usr/bin/env python3
"""The capture world's servers, the same ports as the fuzz targets' simulated host
(fuzz/src/host.rs): TCP 5 reset, 7 echo, 9 discard, 13 daytime, 19 chargen (256 KiB);
UDP 7 echo, 9 discard. DNS (53) is dnsmasq. Dual-stack: each listens on [::], which takes
IPv4 too. Runs until killed."""
import socket
import struct
import threading


def tcp(port, handler):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(64)

    def loop():
        while True:
            c, _ = s.accept()
            threading.Thread(target=handler, args=(c,), daemon=True).start()

    threading.Thread(target=loop, daemon=True).start()


def echo(c):
    with c:
        while data := c.recv(65536):
            c.sendall(data)


def discard(c):
    with c:
        while c.recv(65536):
            pass


def daytime(c):
    with c:
        c.sendall(b"Thursday, January 1, 1970 00:00:00-UTC\r\n")


def chargen(c):
    line = bytes(32 + i % 95 for i in range(16384))
    with c:
        try:
            for _ in range(16):
                c.sendall(line)
        except OSError:
            pass


def reset(c):
    c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c.close()


def udp(port, reply):
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))

    def loop():
        while True:
            data, peer = s.recvfrom(65536)
            if reply:
                s.sendto(data, peer)

    threading.Thread(target=loop, daemon=True).start()


tcp(5, reset)
tcp(7, echo)
tcp(9, discard)
tcp(13, daytime)
tcp(19, chargen)
udp(7, True)
udp(9, False)
print("servers ready", flush=True)
threading.Event().wait()
