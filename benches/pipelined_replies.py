#!/usr/bin/env python3
"""Sends N `self.reply` requests (64-byte text) over one connection, 32 in
flight, and checks every answer. For counting what a server spends per
request under callgrind, where only the difference between two values of N
matters (BENCHMARKS.md, "Instructions per request"):

    python3 benches/pipelined_replies.py PORT N

Standard library only; loopback only.
"""

import base64
import os
import socket
import struct
import sys


def main():
    port, n = int(sys.argv[1]), int(sys.argv[2])
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (
            f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise SystemExit("EOF during the handshake")
        buf += chunk
    buf = buf.split(b"\r\n\r\n", 1)[1]

    def frame(p):
        # A zero mask: the payload goes as it is.
        if len(p) < 126:
            return struct.pack("!BB", 0x81, 0x80 | len(p)) + b"\0\0\0\0" + p
        return struct.pack("!BBH", 0x81, 0x80 | 126, len(p)) + b"\0\0\0\0" + p

    def read_text():
        nonlocal buf

        def need(k):
            nonlocal buf
            while len(buf) < k:
                chunk = s.recv(65536)
                if not chunk:
                    raise SystemExit("EOF")
                buf += chunk

        while True:
            need(2)
            ln, hl = buf[1] & 0x7F, 2
            if ln == 126:
                need(4)
                ln, hl = struct.unpack("!H", buf[2:4])[0], 4
            need(hl + ln)
            op, p, buf = buf[0] & 0x0F, buf[hl : hl + ln], buf[hl + ln :]
            if op == 1:
                return p

    text = "x" * 64
    sent = got = 0
    while got < n:
        out = []
        while sent < n and sent - got < 32:
            req = '{"jsonrpc":"2.0","method":"self.reply","params":{"text":"%s"},"id":%d}'
            out.append(frame((req % (text, sent)).encode()))
            sent += 1
        if out:
            s.sendall(b"".join(out))
        r = read_text()
        if b'"echo"' not in r:
            raise SystemExit(f"unexpected answer {r!r}")
        got += 1
    s.close()
    print("answered", got)


if __name__ == "__main__":
    main()
