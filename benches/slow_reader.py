#!/usr/bin/env python3
"""A client that never reads, while another sends N `broadcast`s of SIZE
bytes to a running seed-compatible server (the example `server`), one at a
time (each waits for its reply); prints the server's RSS before, its peak
RSS (VmHWM) after, and its slow-consumer count.

    python3 benches/slow_reader.py --port 9400 --pid PID [--count 300] [--size 1000000]

The slow client asks for a 4 KiB receive buffer before it connects, as a
slow link would hold little: what the server sends it backs up in the
server's queue rather than in loopback's socket buffers. Standard library
only; loopback only; every read is bounded by --timeout seconds.
"""

import json
import socket

from batch_flood import arguments, connect, read_message, status_kib, text_frame, vm_hwm_kib


def metric(port, name, timeout):
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := s.recv(1 << 16):
            body += chunk
    for line in body.decode(errors="replace").splitlines():
        if line.startswith(name + " "):
            return int(float(line.split()[1]))
    return None


def main():
    a = arguments(count=300, size=1_000_000)

    slow, _ = connect(a.port, a.timeout, rcvbuf=4096)
    # Not another byte is read from it.
    sender, rest = connect(a.port, a.timeout)
    before = status_kib(a.pid, "VmRSS")
    text = "x" * a.size
    for i in range(a.count):
        req = {"jsonrpc": "2.0", "method": "broadcast", "params": {"text": text}, "id": i}
        sender.sendall(text_frame(json.dumps(req).encode()))
        # Its own copy of the broadcast and the reply, in either order.
        while True:
            payload, rest = read_message(sender, rest)
            if b'"id":' in payload[-32:]:
                break
    peak = vm_hwm_kib(a.pid)
    slow_consumers = metric(a.port, "nbio_ws_slow_consumer_disconnects_total", a.timeout)
    now = status_kib(a.pid, "VmRSS")
    print(
        f"{a.count} broadcasts of {a.size} B: server RSS {before} KiB before, "
        f"peak (VmHWM) {peak} KiB, now {now} KiB; "
        f"slow-consumer disconnects: {slow_consumers}"
    )
    slow.close()
    sender.close()


if __name__ == "__main__":
    main()
