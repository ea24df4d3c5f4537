#!/usr/bin/env python3
"""Open N idle TCP connections to ADDR PORT and keep them open until killed."""
import socket
import sys
import time

addr, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = [socket.create_connection((addr, port)) for _ in range(count)]
print(f"{len(held)} idle connections open", file=sys.stderr)
while True:
    time.sleep(3600)
