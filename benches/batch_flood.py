#!/usr/bin/env python3
"""N clients each send one 1 MB JSON-RPC batch of 520,000 `1`s at once to a
running server; prints what came back and the server's peak RSS (VmHWM).

    python3 benches/batch_flood.py --port 9200 --pid PID [--clients 8]

Standard library only; loopback only; every socket is closed at the end and
each read is bounded by --timeout seconds.
"""

import argparse
import base64
import os
import socket
import struct
import threading
import time


def status_kib(pid, field):
    """A `... kB` line of /proc/PID/status (`VmHWM`, `VmRSS`)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise SystemExit(f"no {field}")


def vm_hwm_kib(pid):
    return status_kib(pid, "VmHWM")


def connect(port, timeout, rcvbuf=None):
    """A WebSocket connection to /ws; `rcvbuf` sets SO_RCVBUF first."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("EOF during the handshake")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise SystemExit(head.decode(errors="replace"))
    return s, head.split(b"\r\n\r\n", 1)[1]


def text_frame(payload):
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        header = struct.pack("!BB", 0x81, 0x80 | n)
    elif n < 65536:
        header = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    else:
        header = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
    # XOR the mask in 4-byte words: a byte loop in Python is slow.
    body = bytearray(payload)
    whole = len(body) // 4 * 4
    words = memoryview(body)[:whole].cast("I")
    m = int.from_bytes(mask, "little")
    for i in range(len(words)):
        words[i] ^= m
    for i in range(whole, len(body)):
        body[i] ^= mask[i % 4]
    return header + mask + bytes(body)


def read_message(s, buf):
    """One whole data message (skipping pings); returns (payload, rest)."""
    def need(n):
        nonlocal buf
        while len(buf) < n:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise SystemExit("EOF")
            buf += chunk

    while True:
        need(2)
        op, ln = buf[0] & 0x0F, buf[1] & 0x7F
        hl = 2
        if ln == 126:
            need(4)
            ln, hl = struct.unpack("!H", buf[2:4])[0], 4
        elif ln == 127:
            need(10)
            ln, hl = struct.unpack("!Q", buf[2:10])[0], 10
        need(hl + ln)
        payload, buf = buf[hl : hl + ln], buf[hl + ln :]
        if op in (1, 2):
            return payload, buf


def arguments(**more):
    """--port and --pid of the server, --timeout, and `more` (name: default)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True)
    ap.add_argument("--timeout", type=float, default=60)
    for name, default in more.items():
        ap.add_argument(f"--{name}", type=type(default), default=default)
    return ap.parse_args()


def main():
    a = arguments(clients=8, elements=520_000)

    batch = ("[" + "1," * (a.elements - 1) + "1]").encode()
    frame = text_frame(batch)
    before = vm_hwm_kib(a.pid)
    conns = [connect(a.port, a.timeout) for _ in range(a.clients)]
    results = [None] * a.clients

    def run(i):
        s, rest = conns[i]
        s.sendall(frame)
        payload, _ = read_message(s, rest)
        results[i] = len(payload), payload[:120]

    started = time.monotonic()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - started
    for s, _ in conns:
        s.close()
    time.sleep(0.2)
    after = vm_hwm_kib(a.pid)
    for n, head in results:
        print(f"reply {n} bytes: {head.decode(errors='replace')}")
    print(
        f"{a.clients} x {len(batch)} B batches: server VmHWM {before} KiB -> {after} KiB; "
        f"all replies in {elapsed:.2f} s"
    )


if __name__ == "__main__":
    main()
