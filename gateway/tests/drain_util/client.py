"""Strict WebSocket clients for the drain tests (Python `websockets`, which fails a
connection on any protocol error: a cut frame, a bad Close, an unmasked upstream frame
passed through).

Usage: client.py N URL [URL ...]

Opens N connections (round robin over the URLs), prints READY once all are open, then
each one streams messages (random sizes, some spanning many reads) and checks that
every echo is the exact message it sent, until the connection closes. Prints one JSON
line per connection: url index, close code, whether the close handshake was clean
(ConnectionClosedOK), wall-clock close time, messages echoed, bad echoes, error text.
Every loop is bounded: a connection still open after LIMIT seconds is reported as such.
"""

import asyncio
import json
import os
import random
import ssl
import sys
import time

import websockets

LIMIT = 90.0
# Largest message (env DRAIN_MAX_SIZE): big runs use small ones so one Python process
# keeps up with every connection.
MAX_SIZE = int(os.environ.get("DRAIN_MAX_SIZE", "70000"))
SIZES = [s for s in [1, 7, 125, 126, 300, 4000, 65535, 65536, 70000] if s <= MAX_SIZE]


def message(conn, seq, rng):
    size = rng.choice(SIZES)
    head = f"{conn}:{seq}:".encode()
    body = bytes((conn * 31 + seq * 7 + i) & 0xFF for i in range(size))
    return head + body


async def stream(conn, url, index, opened, go):
    rng = random.Random(conn)
    res = {"conn": conn, "url": index, "code": None, "ok": False, "closed_at": None,
           "echoed": 0, "bad": 0, "error": None}
    try:
        tls = None
        if url.startswith("wss:"):
            # The test CA (DRAIN_CA); the certificate names localhost.
            tls = ssl.create_default_context(cafile=os.environ["DRAIN_CA"])
        ws = await websockets.connect(url, max_size=None, ping_interval=None, close_timeout=10,
                                      compression=None, ssl=tls,
                                      server_hostname="localhost" if tls else None)
    except Exception as e:  # the test counts it
        res["error"] = f"connect: {e!r}"
        opened.append(False)
        return res
    opened.append(True)
    await go.wait()
    deadline = time.monotonic() + LIMIT
    seq = 0
    try:
        while time.monotonic() < deadline:
            m = message(conn, seq, rng)
            await ws.send(m)
            got = await ws.recv()
            if got != m:
                res["bad"] += 1
            else:
                res["echoed"] += 1
            seq += 1
            await asyncio.sleep(rng.uniform(0.005, 0.03))
        res["error"] = "still open at the limit"
    except websockets.ConnectionClosedOK:
        res["ok"] = True
    except websockets.ConnectionClosedError as e:
        res["error"] = f"closed with an error: {e!r}"
    except Exception as e:
        res["error"] = f"{e!r}"
    res["closed_at"] = time.time()
    res["code"] = ws.close_code
    return res


async def main():
    n = int(sys.argv[1])
    urls = sys.argv[2:]
    opened = []
    go = asyncio.Event()
    tasks = [asyncio.create_task(stream(i, urls[i % len(urls)], i % len(urls), opened, go))
             for i in range(n)]
    while len(opened) < n:
        await asyncio.sleep(0.05)
    print(f"READY {sum(opened)}", flush=True)
    go.set()
    for t in asyncio.as_completed(tasks):
        print(json.dumps(await t), flush=True)


asyncio.run(main())
