#!/usr/bin/env python3
"""Seeds for the `vnet` fuzz target (fuzz/corpus/vnet): reads from a TAP with vnet headers,
each after the target's configuration byte (bit 0: 12-byte header; bits 1-2: MTU 1500, 576,
65520, 9000). Honest headers as a Linux guest with offloads writes them (TCP super-segments
over IPv4 and IPv6, checksums left to the receiver, a SYN, a DNS query), and each kind of lie
the stack must refuse. Also copies a few `stateful` seeds into its vnet mode (bit 5 of their
first byte). Run from anywhere: python3 fuzz/seeds/vnet_seeds.py"""
import hashlib
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "..", "corpus")
GUEST_MAC = bytes([0x02, 0x42, 0x0A, 0x00, 0x02, 0x64])
GW_MAC = bytes([0x52, 0x55, 0x0A, 0x00, 0x02, 0x02])
NEEDS_CSUM, TCPV4, TCPV6 = 1, 1, 4


def csum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, l4):
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0,
                    bytes(map(int, src.split("."))), bytes(map(int, dst.split("."))))
    h = h[:10] + struct.pack("!H", csum(h)) + h[12:]
    return b"\x08\x00", h + l4


def ipv6(src, dst, proto, l4):
    import ipaddress
    h = struct.pack("!IHBB16s16s", 6 << 28, len(l4), proto, 64,
                    ipaddress.IPv6Address(src).packed, ipaddress.IPv6Address(dst).packed)
    return b"\x86\xdd", h + l4


def frame(ip):
    ethertype, packet = ip
    return GW_MAC + GUEST_MAC + ethertype + packet


def tcp(sport, dport, flags, payload=b"", options=b""):
    off = (20 + len(options)) // 4
    return struct.pack("!HHIIBBHHH", sport, dport, 0x10000000, 0, off << 4, flags, 65535, 0,
                       0) + options + payload


def udp(sport, dport, payload):
    return struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def header(flags=0, gso_type=0, hdr_len=0, gso_size=0, csum_start=0, csum_offset=0):
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def write(target, data):
    name = hashlib.sha1(data).hexdigest()
    with open(os.path.join(CORPUS, target, name), "wb") as f:
        f.write(data)


def seed(conf, head, frm):
    pad = b"\0\0" if conf & 1 else b""
    write("vnet", bytes([conf]) + head + pad + frm)


v4_data = frame(ipv4("10.0.2.100", "198.18.0.1", 6, tcp(40000, 7, 0x18, bytes(range(256)) * 12)))
v6_data = frame(ipv6("fd00::100", "2001:2::1", 6, tcp(40000, 7, 0x18, bytes(range(256)) * 12)))
mss = struct.pack("!BBH", 2, 4, 1460) + b"\x01\x03\x03\x07"
syn = frame(ipv4("10.0.2.100", "10.0.2.2", 6, tcp(40001, 7, 0x02, options=mss)))
syn6 = frame(ipv6("fd00::100", "fd00::2", 6, tcp(40001, 7, 0x02, options=mss)))
dns = frame(ipv4("10.0.2.100", "10.0.2.3", 17, udp(5353, 53, bytes.fromhex(
    "123401000001000000000000076578616d706c6503636f6d0000010001"))))
arp = GW_MAC[:0] + b"\xff" * 6 + GUEST_MAC + b"\x08\x06" + struct.pack(
    "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, GUEST_MAC, bytes([10, 0, 2, 100]), b"\0" * 6,
    bytes([10, 0, 2, 2]))

tso4 = header(NEEDS_CSUM, TCPV4, 54, 1448, 34, 16)
tso6 = header(NEEDS_CSUM, TCPV6, 74, 1428, 54, 16)
for conf in (0, 1, 4):
    seed(conf, tso4, v4_data)
    seed(conf, tso6, v6_data)
    seed(conf, header(NEEDS_CSUM, 0, 0, 0, 34, 16), syn)
    seed(conf, header(NEEDS_CSUM, 0, 0, 0, 54, 16), syn6)
    seed(conf, header(NEEDS_CSUM, 0, 0, 0, 34, 6), dns)
    seed(conf, header(), arp)
# Lies.
seed(0, header(NEEDS_CSUM, TCPV4, 54, 0, 34, 16), v4_data)
seed(0, header(NEEDS_CSUM, TCPV4, 54, 60000, 34, 16), v4_data)
seed(0, header(NEEDS_CSUM, TCPV4, 54, 1448, 4000, 16), v4_data)
seed(0, header(NEEDS_CSUM, TCPV4, 54, 1448, 20, 16), v4_data)
seed(0, header(NEEDS_CSUM, TCPV4, 9000, 1448, 34, 16), v4_data)
seed(0, header(NEEDS_CSUM, TCPV4, 74, 1448, 54, 16), v6_data)
seed(0, header(NEEDS_CSUM, TCPV6, 54, 1448, 34, 16), v4_data)
seed(0, header(NEEDS_CSUM, 5, 42, 1448, 34, 6), dns)
seed(0, header(0x40), arp)

# The stateful target in its vnet mode: some of its seeds, with bit 5 of the first byte set.
stateful = os.path.join(CORPUS, "stateful")
for name in sorted(os.listdir(stateful))[:12]:
    data = open(os.path.join(stateful, name), "rb").read()
    if data and not data[0] & 0x20:
        write("stateful", bytes([data[0] | 0x20]) + data[1:])

# UDP segmentation (a UDP_SEGMENT send): three DNS-sized datagrams to the DNS forwarder and
# three to the host's UDP echo, over IPv4 and IPv6.
USO = 5
query = bytes.fromhex("123401000001000000000000076578616d706c6503636f6d0000010001")
uso_dns = frame(ipv4("10.0.2.100", "10.0.2.3", 17, udp(5353, 53, query * 3)))
uso_echo6 = frame(ipv6("fd00::100", "2001:2::1", 17, udp(5354, 7, bytes(range(200)) * 3)))
seed(0, header(NEEDS_CSUM, USO, 42, len(query), 34, 6), uso_dns)
seed(0, header(NEEDS_CSUM, USO, 62, 200, 54, 6), uso_echo6)
seed(0, header(NEEDS_CSUM, USO, 42, 0, 34, 6), uso_dns)
