#!/usr/bin/env python3
"""Echo TCP on ADDR PORT to many clients at once (one thread, selectors), until killed."""
import selectors
import socket
import sys

sel = selectors.DefaultSelector()
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind((sys.argv[1], int(sys.argv[2])))
server.listen(4096)
server.setblocking(False)
sel.register(server, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        sock = key.fileobj
        if sock is server:
            try:
                conn, _ = server.accept()
            except OSError:
                continue
            conn.setblocking(False)
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sel.register(conn, selectors.EVENT_READ)
            continue
        try:
            data = sock.recv(65536)
            if data:
                sock.sendall(data)
                continue
        except OSError:
            pass
        sel.unregister(sock)
        sock.close()
