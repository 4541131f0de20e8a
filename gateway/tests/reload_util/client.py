"""Streaming WebSocket clients for the reload tests (Python `websockets`, strict: any
protocol error fails the connection).

Usage: client.py STOP_FILE N URL [URL ...]   (env RELOAD_CA: CA file for wss:// URLs)

Opens N connections (round robin over the URLs), prints READY once all are open, then
each one streams messages (sizes from 1 byte to 70000, seeded contents) and checks that
every echo is the exact message it sent, until STOP_FILE exists; then it closes with
1000 and prints one JSON line: url index, messages echoed, bad echoes, wall-clock time of
its last good echo, the longest time between two good echoes (max_gap, s), whether the
close handshake completed, error text, its local port and the payload bytes it sent.
Bounded: LIMIT seconds (env RELOAD_LIMIT). With RELOAD_QUIET_EVERY=K, every K-th
connection waits 1.5-2.5 s between messages (quiet: `auto` hands such pairs to the
kernel splice), the others 10-50 ms.
"""

import asyncio
import json
import os
import random
import ssl
import sys
import time

import websockets

LIMIT = float(os.environ.get("RELOAD_LIMIT", "120"))
QUIET_EVERY = int(os.environ.get("RELOAD_QUIET_EVERY", "0"))
SIZES = [1, 7, 125, 126, 300, 4000, 65535, 65536, 70000]


# Message bodies are slices of one seeded pool (cheap to make, so thousands of
# connections stream from one process); each message still differs by its head and offset.
POOL = random.Random(7).randbytes(2 * max(SIZES))


def message(conn, seq, rng):
    size = rng.choice(SIZES)
    head = f"{conn}:{seq}:".encode()
    start = (conn * 31 + seq * 7) % max(SIZES)
    return head + POOL[start:start + size]


async def stream(conn, url, index, stop, opened, go, tls):
    rng = random.Random(conn)
    res = {"conn": conn, "url": index, "echoed": 0, "bad": 0, "last_echo": None,
           "clean": False, "error": None, "max_gap": 0.0, "port": None, "sent": 0}
    try:
        ws = await websockets.connect(url, max_size=None, ping_interval=None, close_timeout=10,
                                      compression=None, ssl=tls if url.startswith("wss") else None,
                                      server_hostname="localhost" if url.startswith("wss") else None)
    except Exception as e:  # the test counts it
        res["error"] = f"connect: {e!r}"
        opened.append(False)
        return res
    opened.append(True)
    res["port"] = ws.local_address[1]
    await go.wait()
    deadline = time.monotonic() + LIMIT
    quiet = QUIET_EVERY > 0 and conn % QUIET_EVERY == 0
    seq = 0
    try:
        while not os.path.exists(stop):
            if time.monotonic() > deadline:
                res["error"] = "still streaming at the limit"
                return res
            m = message(conn, seq, rng)
            await ws.send(m)
            res["sent"] += len(m)
            got = await ws.recv()
            if got == m:
                res["echoed"] += 1
                now = time.time()
                if res["last_echo"] is not None:
                    res["max_gap"] = max(res["max_gap"], now - res["last_echo"])
                res["last_echo"] = now
            else:
                res["bad"] += 1
            seq += 1
            if quiet:
                # Wakes early when asked to stop, so the close is not held up.
                until = time.monotonic() + rng.uniform(1.5, 2.5)
                while time.monotonic() < until and not os.path.exists(stop):
                    await asyncio.sleep(0.1)
            else:
                await asyncio.sleep(rng.uniform(0.01, 0.05))
        await ws.close(1000)
        # The test's echo upstream answers a Close with an empty one (1005); a close
        # that timed out or was cut is 1006.
        res["code"] = ws.close_code
        res["clean"] = ws.close_code in (1000, 1005)
    except Exception as e:
        res["error"] = f"{e!r}"
    return res


async def main():
    stop, n, urls = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    tls = None
    if os.environ.get("RELOAD_CA"):
        tls = ssl.create_default_context(cafile=os.environ["RELOAD_CA"])
    opened = []
    go = asyncio.Event()
    tasks = [asyncio.create_task(stream(i, urls[i % len(urls)], i % len(urls), stop, opened, go, tls))
             for i in range(n)]
    while len(opened) < n:
        await asyncio.sleep(0.05)
    print(f"READY {sum(opened)}", flush=True)
    go.set()
    for t in asyncio.as_completed(tasks):
        print(json.dumps(await t), flush=True)


asyncio.run(main())
