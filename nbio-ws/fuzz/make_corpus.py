#!/usr/bin/env python3
"""Writes the small seed corpora checked in under corpus/ (run from this
directory). Inputs that crashed go to regressions/<target>/ instead, where
nbio-ws/tests/fuzz_regressions.rs replays them on every test run."""
import hashlib, os, struct

def put(target, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    name = hashlib.sha1(data).hexdigest()[:16]
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)

rpc = [
    b'{"jsonrpc":"2.0","method":"echo","params":{"text":"hi"},"id":1}',
    b'{"jsonrpc":"2.0","method":"add","params":[1,2],"id":"a"}',
    b'{"jsonrpc":"2.0","method":"add","params":[9223372036854775807,1],"id":2}',
    b'{"jsonrpc":"2.0","method":"fail","id":null}',
    b'{"jsonrpc":"2.0","method":"panic","id":3}',
    b'{"jsonrpc":"2.0","method":"echo","params":[1]}',
    b'[{"jsonrpc":"2.0","method":"echo","params":[1],"id":1},5,{"jsonrpc":"2.0","method":"x","id":"\\u00e9"}]',
    b'[]', b'[1,', b'{', b'"x"', b'{"jsonrpc":"1.0","method":"m","id":{}}',
    b'{"jsonrpc":"2.0","method":"self\\u002ereply","id":1.5e3}',
    b'{"jsonrpc":"2.0","method":1,"params":"x","id":[1]}',
]
for r in rpc:
    put("jsonrpc_parse", r)
    put("dispatch", b"\x00" + r)
    put("dispatch", b"\xaa" + r)

def script(*frames):
    out = b""
    for fin, op, payload in frames:
        out += bytes([(0x80 if fin else 0) | op, len(payload)]) + payload
    return out

euro = "€".encode()
put("assembler", script((True, 1, b"hello")))
put("assembler", script((False, 1, b"he"), (False, 0, b"ll"), (True, 0, b"o")))
put("assembler", script((False, 1, euro[:1]), (True, 0, euro[1:])))
put("assembler", script((False, 2, b"x" * 40), (True, 0, b"y" * 40)))
put("assembler", script((True, 0, b"stray"), (False, 1, b"a"), (True, 1, b"b")))
put("assembler", script((True, 3, struct.pack(">H", 1000) + b"bye")))

for p in [b"", b"\x03", struct.pack(">H", 1000), struct.pack(">H", 1005),
          struct.pack(">H", 4999) + b"reason", struct.pack(">H", 1000) + b"\xff"]:
    put("close_frame", p)

def frame(fin, op, payload, mask=b"\x12\x34\x56\x78"):
    n = len(payload)
    head = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

put("frames", b"\x00" + frame(True, 1, b'{"jsonrpc":"2.0","method":"m","id":1}'))
put("frames", b"\x03" + frame(False, 1, b"ab") + frame(True, 9, b"ping") + frame(True, 0, b"cd"))
put("frames", b"\x07" + frame(True, 2, bytes(200)) + frame(True, 8, struct.pack(">H", 1000)))
put("frames", b"\x01" + frame(True, 1, b"x" * 300))
put("frames", b"\x0f" + frame(True, 8, b"\x03"))
put("frames", b"\x02" + bytes([0x81, 0x05]) + b"hello")

# Broker envelopes (nbio-ws/src/cluster/envelope.rs), under fixed names:
# the envelope's unit tests decode them too.
def put_named(target, name, data):
    os.makedirs(f"corpus/{target}", exist_ok=True)
    with open(f"corpus/{target}/{name}", "wb") as f:
        f.write(data)

def s(b):
    return struct.pack(">I", len(b)) + b

def client(instance, counter):
    return struct.pack(">QQ", instance, counter)

def envelope(origin, first_seq, *entries):
    return b"N" + bytes([4]) + struct.pack(">QQ", origin, first_seq) + b"".join(entries)

put_named("envelope", "broadcast_direct", envelope(7, 0,
    b"B" + s(b'{"jsonrpc":"2.0","method":"m"}'),
    b"D" + client(7, 42) + s(b"{}")))
put_named("envelope", "room", envelope(9, 5,
    b"R" + s(b"lobby") + client(9, 3) + s(b'{"jsonrpc":"2.0","method":"chat.message","params":{}}')))
put_named("envelope", "presence", envelope(11, 0,
    b"J" + struct.pack(">Q", 1) + s(b"lobby") + client(11, 11) + s(b'{"nick":"ada"}'),
    b"L" + struct.pack(">Q", 3) + s(b"lobby") + client(11, 11),
    b"H" + struct.pack(">QI", 3, 15000),
    b"S" + struct.pack(">QIII", 3, 0, 2, 1) + s(b"lobby") + struct.pack(">Q", 2) + client(11, 12) + s(b"null"),
    b"S" + struct.pack(">QIII", 3, 1, 2, 1) + s(b"k") + struct.pack(">Q", 3) + client(11, 13) + s(b'{"a":1}'),
    b"Q" + struct.pack(">Q", 0),
    b"X"))
