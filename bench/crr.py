#!/usr/bin/env python3
"""TCP connect/request/response/close: N times in a row, connect to ADDR PORT, send one byte,
read it back, close. Prints the median and 99th percentile of one such exchange, in µs."""
import socket
import sys
import time

addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
times = []
for _ in range(count):
    start = time.perf_counter_ns()
    with socket.create_connection((addr, port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(b"x")
        if s.recv(1) != b"x":
            sys.exit("crr: the echo server did not echo")
    times.append(time.perf_counter_ns() - start)
times.sort()
print("%.1f %.1f" % (times[len(times) // 2] / 1e3, times[len(times) * 99 // 100] / 1e3))
