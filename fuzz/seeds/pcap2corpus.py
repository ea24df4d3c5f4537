#!/usr/bin/env python3
"""Turn what fuzz/seeds/capture.sh recorded into seed corpora for each fuzz target.

    fuzz/seeds/pcap2corpus.py CAPTURE_DIR [CORPUS_DIR]      (default CORPUS_DIR: fuzz/corpus)

Reads CAPTURE_DIR/tap0.pcap (tap0 inside `usernet run`), lo.pcap (the world's DNS upstream
traffic) and the strace logs run.strace / slirp.strace (bytes usernet read from its API
sockets and the child read from .bp.sock), and writes files named by their SHA-1 (as libFuzzer
names them) into CORPUS_DIR/<target>/, in each target's input format (see the module docs at
the top of fuzz/fuzz_targets/*.rs):

- frame:      each distinct frame the guest sent (one per kind of frame, not every ACK);
- stateful:   per TCP connection, UDP exchange and ping, the guest's frames as operations
              (TCP segments as `tcp` operations, so they carry the right numbers when
              replayed against a new stack), a turn of the loop after each; plus the whole
              capture in one input, and a few forward scenarios;
- services:   DHCP messages, DNS queries each with the upstream's real answer, ARP;
- bp_request: the .bp.sock requests the parent sent (length-prefixed JSON);
- api:        REST requests from `usernet ports`, rootlessctl and curl, and slirp4netns API
              requests.

IPv6 frames become operations of the stateful target's IPv6 mode (configuration bit 4) and
IPv6 records of the services target. With --ipv6-only, only the guest's IPv6 frames are
converted (to add IPv6 seeds to a corpus made before).

Existing files are kept; only new ones are added. Pure Python, no dependencies.
"""
import ipaddress
import hashlib
import os
import re
import struct
import sys

GW, DNS, REMOTE = "10.0.2.2", "10.0.2.3", "198.18.0.1"
UNREACHABLE, NOBODY = "203.0.113.5", "10.0.2.50"

# The tables in fuzz/fuzz_targets/stateful.rs, in the same order.
TCP_DESTS = [(GW, 7), (GW, 9), (GW, 19), (GW, 13), (GW, 5), (GW, 1), (DNS, 53), (DNS, 80),
             (REMOTE, 7), (REMOTE, 19), (UNREACHABLE, 80), (NOBODY, 80), ("127.0.0.1", 7),
             (GW, 47000)]
UDP_DESTS = [(GW, 7), (GW, 9), (DNS, 53), (DNS, 54), (GW, 53), (REMOTE, 7), (UNREACHABLE, 53),
             (GW, 1), (NOBODY, 7), ("255.255.255.255", 7)]
PING_DESTS = [GW, DNS, REMOTE, UNREACHABLE, NOBODY, "127.0.0.1"]
GW6, ROUTER6, DNS6, REMOTE6 = "fd00::2", "fe80::2", "fd00::3", "2001:2::1"
UNREACHABLE6, NOBODY6 = "2001:db8::5", "fd00::50"
TCP_DESTS6 = [(GW6, 7), (GW6, 9), (GW6, 19), (ROUTER6, 13), (GW6, 5), (GW6, 1), (DNS6, 53),
              (DNS6, 80), (REMOTE6, 7), (REMOTE6, 19), (UNREACHABLE6, 80), (NOBODY6, 80),
              ("::1", 7), ("::ffff:127.0.0.1", 7)]
UDP_DESTS6 = [(GW6, 7), (ROUTER6, 9), (DNS6, 53), (DNS6, 54), (GW6, 53), (REMOTE6, 7),
              (UNREACHABLE6, 53), (GW6, 1), (NOBODY6, 7), ("ff02::1", 7)]
PING_DESTS6 = [GW6, ROUTER6, REMOTE6, UNREACHABLE6, NOBODY6, "::1"]
CONF_IPV6 = 16

OP_RAW, OP_TCP, OP_UDP, OP_PING, OP_ARP, OP_TURN, OP_CLOCK = 0, 1, 2, 3, 4, 5, 6
OP_FORWARD, OP_CONNECT, OP_CLIENT, OP_CLOSE, OP_DATAGRAM, OP_UNFORWARD = 7, 8, 9, 10, 11, 12
TURN_NOW = 0  # one turn, no pause
TURN_1MS = 4  # one turn after a 100 µs pause
TURN_2X1MS = 5  # two of them


def pcap_frames(path):
    """(timestamp, bytes) of each frame of a little- or big-endian pcap file."""
    if not os.path.exists(path):
        return []
    data = open(path, "rb").read()
    if len(data) < 24:
        return []
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    linktype = struct.unpack(endian + "I", data[20:24])[0]
    frames, off = [], 24
    while off + 16 <= len(data):
        sec, frac, incl, _ = struct.unpack(endian + "IIII", data[off:off + 16])
        off += 16
        frame = data[off:off + incl]
        off += incl
        if linktype == 113:  # Linux cooked capture (SLL): make an Ethernet header of it.
            frame = b"\0" * 12 + frame[14:16] + frame[16:]
        frames.append((sec + frac / (1e9 if nano else 1e6), frame))
    return frames


def ip4(b):
    return ".".join(str(x) for x in b)


def ip6(b):
    return str(ipaddress.IPv6Address(bytes(b)))


def parse(frame):
    """A dict describing an Ethernet frame (enough for the conversions below)."""
    d = {"raw": frame, "src_mac": frame[6:12], "type": struct.unpack(">H", frame[12:14])[0]}
    if d["type"] == 0x86dd and len(frame) >= 54:
        ip = frame[14:]
        plen = struct.unpack(">H", ip[4:6])[0]
        d.update(proto=ip[6], src=ip6(ip[8:24]), dst=ip6(ip[24:40]), fragment=ip[6] == 44)
        l4 = ip[40:40 + plen]
    elif d["type"] == 0x0800 and len(frame) >= 34:
        ip = frame[14:]
        ihl = (ip[0] & 15) * 4
        total = struct.unpack(">H", ip[2:4])[0]
        frag = struct.unpack(">H", ip[6:8])[0]
        d.update(proto=ip[9], src=ip4(ip[12:16]), dst=ip4(ip[16:20]),
                 fragment=bool(frag & 0x2000 or frag & 0x1fff))
        l4 = ip[ihl:total]
    else:
        return d
    d["l4"] = l4
    if d["fragment"]:
        return d
    if d["proto"] == 6 and len(l4) >= 20:
        hl = (l4[12] >> 4) * 4
        d.update(sport=struct.unpack(">H", l4[0:2])[0], dport=struct.unpack(">H", l4[2:4])[0],
                 flags=l4[13] & 0x3f, window=struct.unpack(">H", l4[14:16])[0],
                 options=l4[20:hl], payload=l4[hl:])
    elif d["proto"] == 17 and len(l4) >= 8:
        d.update(sport=struct.unpack(">H", l4[0:2])[0], dport=struct.unpack(">H", l4[2:4])[0],
                 payload=l4[8:])
    elif d["proto"] in (1, 58) and len(l4) >= 8:
        d.update(icmp_type=l4[0], ident=struct.unpack(">H", l4[4:6])[0],
                 seq=struct.unpack(">H", l4[6:8])[0], payload=l4[8:])
    return d


def is_ipv6(d):
    return d["type"] == 0x86dd


def from_guest(d):
    """Frames usernet sends come from 52:55:..."""
    return d["src_mac"][:2] != b"\x52\x55"


def u16(n):
    return struct.pack(">H", min(n, 0xffff))


def chunk(b):
    b = b[:0xffff]
    return u16(len(b)) + b


def as_op(d, ipv6=False):
    """One guest frame as stateful operations (without the turn after it), in the target's
    IPv4 or IPv6 mode."""
    proto = d.get("proto")
    tcp_dests, udp_dests, ping_dests = ((TCP_DESTS6, UDP_DESTS6, PING_DESTS6) if ipv6
                                        else (TCP_DESTS, UDP_DESTS, PING_DESTS))
    echo = 128 if ipv6 else 8
    if is_ipv6(d) != ipv6:
        return bytes([OP_RAW]) + chunk(d["raw"])
    if proto == 6 and "sport" in d and (d["dst"], d["dport"]) in tcp_dests:
        which = tcp_dests.index((d["dst"], d["dport"]))
        bits = d["flags"]
        opts = b""
        if d["options"]:
            bits |= 0x80
            opts = bytes([len(d["options"])]) + d["options"]
        return (bytes([OP_TCP, which, d["sport"] & 0xff, bits]) + opts + u16(d["window"])
                + chunk(d["payload"]))
    if proto == 17 and "sport" in d and (d["dst"], d["dport"]) in udp_dests:
        which = udp_dests.index((d["dst"], d["dport"]))
        return bytes([OP_UDP, which, d["sport"] & 0xff]) + chunk(d["payload"])
    if proto in (1, 58) and d.get("icmp_type") == echo and d["dst"] in ping_dests:
        return (bytes([OP_PING, ping_dests.index(d["dst"])]) + u16(d["ident"]) + u16(d["seq"])
                + chunk(d["payload"]))
    return bytes([OP_RAW]) + chunk(d["raw"])


def expects_answer(d):
    """Whether the host side has something to answer to this guest frame."""
    if d.get("proto") in (1, 17, 58):
        return True
    return d.get("proto") == 6 and bool(d.get("flags", 0) & 0x03 or d.get("payload"))


def stateful(frames, conf=0):
    """The guest's frames as operations, each followed by a turn of the loop (after a pause
    when the host has something to answer)."""
    out = bytes([conf])
    for d in frames:
        out += (as_op(d, bool(conf & CONF_IPV6))
                + bytes([OP_TURN, TURN_1MS if expects_answer(d) else TURN_NOW]))
    return out


def signature(d):
    """Frames with the same signature exercise the same paths; one of each is kept."""
    if d["type"] == 0x86dd and d.get("proto") == 58:
        l4 = d.get("l4", b"")
        return ("icmpv6", d.get("dst"), l4[:1], len(l4) > 100)
    if d["type"] not in (0x0800, 0x86dd):
        return ("eth", d["type"], d["raw"][14:22] if d["type"] == 0x0806 else len(d["raw"]))
    if d.get("fragment"):
        return ("frag", d["proto"], d["raw"][20:22])
    size = len(d.get("payload", b""))
    bucket = 0 if size == 0 else 1 if size < 100 else 2 if size < 1400 else 3
    return (d.get("proto"), d.get("dst"), d.get("dport"), d.get("flags"), bool(d.get("options")),
            bucket)


STRACE_STRING = re.compile(r'"((?:\\x[0-9a-f]{2})+)"')


def strace_reads(path):
    """Every byte string in read/recv lines of an strace -xx log."""
    if not os.path.exists(path):
        return []
    out = []
    for line in open(path, errors="replace"):
        if not re.search(r"\b(read|recvfrom|recvmsg)\(", line):
            continue
        for m in STRACE_STRING.finditer(line):
            out.append(bytes.fromhex(m.group(1).replace("\\x", "")))
    return out


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    ipv6_only = "--ipv6-only" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--ipv6-only"]
    cap = args[0]
    corpus = args[1] if len(args) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "corpus")
    seeds = {t: [] for t in ("frame", "stateful", "services", "bp_request", "api")}

    tap = [(t, parse(f)) for t, f in pcap_frames(os.path.join(cap, "tap0.pcap"))]
    guest = [d for _, d in tap if from_guest(d) and (is_ipv6(d) or not ipv6_only)]
    lo = [parse(f) for _, f in pcap_frames(os.path.join(cap, "lo.pcap"))]

    # frame: one of each kind.
    seen = set()
    for d in guest:
        sig = signature(d)
        if sig not in seen:
            seen.add(sig)
            seeds["frame"].append(d["raw"])

    # stateful: per connection / exchange, and everything at once.
    groups, order = {}, []
    for d in guest:
        if d.get("proto") in (6, 17) and "sport" in d:
            key = (d["proto"], d["sport"], d["dst"], d["dport"])
        elif d.get("proto") == 1 and "ident" in d:
            key = ("icmp", d["dst"], d["ident"])
        elif d.get("fragment"):
            key = ("frag", d["dst"])
        else:
            key = ("link", d["type"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(d)
    for key in order:
        frames = groups[key]
        # Long transfers: their start and end are what matters.
        if len(frames) > 40:
            frames = frames[:20] + frames[-20:]
        seeds["stateful"].append(stateful(frames, CONF_IPV6 if is_ipv6(frames[0]) else 0))
    everything = [d for d in guest if not (d.get("proto") == 6 and len(d.get("payload", b"")) > 1000)]
    v4 = [d for d in everything if not is_ipv6(d)]
    v6 = [d for d in everything if is_ipv6(d)]
    if v4:
        seeds["stateful"].append(stateful(everything[:400]))
        for conf in (1, 2, 4, 8):  # other MTUs, --disable-host-loopback, --disable-dns
            seeds["stateful"].append(stateful(everything[:120], conf))
    if v6:
        seeds["stateful"].append(stateful(v6[:400], CONF_IPV6))
        for conf in (1, 4, 8):
            seeds["stateful"].append(stateful(v6[:120], CONF_IPV6 | conf))
    syn = next((d for d in guest if d.get("proto") == 6 and d.get("flags") == 0x02), None)
    if syn and not ipv6_only:
        # A connection whose host side stalls, then the clock runs past every timeout.
        seeds["stateful"].append(stateful([syn]) + bytes([OP_CLOCK]) + u16(3100)
                                 + bytes([OP_CLOCK]) + u16(12100))
    # Forwards: the host connects into the guest, which answers (flow 0x80 = the connection
    # the stack opened), a datagram for a UDP forward, and a forward to a guest that never
    # answers ARP. The guest's answers are built by the target, so these are sequences of
    # operations rather than captured frames.
    arp = next((d["raw"] for d in guest if d["type"] == 0x0806), None)
    learn = bytes([OP_RAW]) + chunk(arp) if arp else bytes([OP_ARP, 0, 0])
    forwards = [] if ipv6_only else seeds["stateful"]
    forwards.append(
        bytes([0]) + learn + bytes([OP_FORWARD, 0, OP_CONNECT, 0, 0, OP_TURN, TURN_2X1MS])
        + bytes([OP_TCP, 0x80, 0, 0x12]) + u16(65535) + chunk(b"")
        + bytes([OP_CLIENT, 0]) + chunk(b"hello guest\n") + bytes([OP_TURN, TURN_1MS])
        + bytes([OP_TCP, 0x80, 0, 0x18]) + u16(65535) + chunk(b"hello host\n")
        + bytes([OP_CLOSE, 0, 2, OP_TURN, TURN_1MS])
        + bytes([OP_TCP, 0x80, 0, 0x11]) + u16(65535) + chunk(b"")
        + bytes([OP_TURN, TURN_2X1MS, OP_UNFORWARD, 0]))
    forwards.append(
        bytes([0]) + learn + bytes([OP_FORWARD, 1, OP_DATAGRAM, 0, 1]) + chunk(b"datagram")
        + bytes([OP_TURN, TURN_1MS, OP_CLOCK]) + u16(13000) + bytes([OP_UNFORWARD, 0]))
    forwards.append(
        bytes([0, OP_FORWARD, 0x10, OP_CONNECT, 0, 1, OP_TURN, TURN_1MS, OP_CLOCK]) + u16(100)
        + bytes([OP_CLOCK]) + u16(400))

    # services.
    answers = {}
    for d in lo:
        if d.get("proto") == 17 and d.get("sport") == 53 and len(d.get("payload", b"")) >= 2:
            answers.setdefault(d["payload"][:2], d["payload"])
    all_records, queries = [], []
    for d in guest:
        rec = None
        if d.get("proto") == 17 and d.get("dport") == 67:
            flags = {"255.255.255.255": 0, GW: 1, "10.0.2.255": 2}.get(d["dst"], 3)
            if d["src"] != "0.0.0.0":
                flags |= 4
            rec = bytes([0]) + chunk(bytes([flags]) + d["payload"])
        elif d.get("proto") == 17 and (d.get("dst"), d.get("dport")) in ((DNS, 53), (DNS6, 53)):
            q = d["payload"]
            kind = 5 if is_ipv6(d) else 1
            rec = bytes([kind]) + chunk(bytes([d["sport"] & 0xff]) + q)
            queries.append(rec)
            if q[:2] in answers:
                rec += bytes([2]) + chunk(bytes([0b110]) + answers[q[:2]])
        elif d["type"] == 0x0806:
            rec = bytes([3]) + chunk(d["raw"][14:42])
        elif d.get("proto") == 58 and d.get("l4", b"")[:1] in (b"\x85", b"\x87"):
            # A router or neighbour solicitation: the NDP record overwrites a solicitation of
            # the same kind (the first byte, its type, picks it) from the ICMPv6 header on.
            rec = bytes([6]) + chunk(d["l4"])
        if rec and rec not in all_records:
            all_records.append(rec)
            seeds["services"].append(rec)
    seeds["services"].append(b"".join(all_records))
    if queries:
        # Silence upstream, then the clock: failover to the second upstream, then SERVFAIL.
        seeds["services"].append(queries[0] + bytes([4]) + chunk(u16(110)) + bytes([4])
                                 + chunk(u16(310)))

    # bp_request, api: what usernet read from its sockets.
    reads = strace_reads(os.path.join(cap, "run.strace")) + strace_reads(
        os.path.join(cap, "slirp.strace"))
    for b in [] if ipv6_only else reads:
        if re.match(rb"(GET|POST|PUT|DELETE|HEAD) /\S* HTTP/1\.[01]\r\n", b):
            seeds["api"].append(b"\x00" + b)
        elif b.lstrip().startswith(b'{"execute"'):
            seeds["api"].append(b"\x01" + b)
        elif re.match(rb'\{"[Tt]ype"', b):
            seeds["bp_request"].append(b"\x00" + struct.pack("<I", len(b)) + b)

    written = {}
    for target, items in seeds.items():
        d = os.path.join(corpus, target)
        os.makedirs(d, exist_ok=True)
        n = 0
        for item in items:
            if not item:
                continue
            path = os.path.join(d, hashlib.sha1(item).hexdigest())
            if not os.path.exists(path):
                with open(path, "wb") as f:
                    f.write(item)
                n += 1
        written[target] = n
    for target, n in written.items():
        total = len(os.listdir(os.path.join(corpus, target)))
        print(f"{target}: {n} new, {total} in {os.path.join(corpus, target)}")


if __name__ == "__main__":
    main()
