#!/usr/bin/env python3
"""Accept TCP connections on ADDR PORT and hold them open, idle, until killed."""
import socket
import sys

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(4096)
held = []
while True:
    conn, _ = server.accept()
    held.append(conn)
