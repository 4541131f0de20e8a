"""The reference parser's verdict on each request head of the differential test.

Reads JSON lines {"name": ..., "hex": ...} on stdin; writes JSON lines
{"name": ..., "verdict": "accept" | "refuse" | "incomplete", "detail": ...} on stdout.
A head is accepted when h11 (a server-side connection) yields a Request from it,
refused when h11 raises a protocol error, incomplete when h11 wants more bytes.
"""

import json
import sys

import h11


def verdict(data: bytes):
    conn = h11.Connection(h11.SERVER)
    try:
        conn.receive_data(data)
        event = conn.next_event()
    except h11.RemoteProtocolError as e:
        return "refuse", str(e)
    if event is h11.NEED_DATA:
        return "incomplete", ""
    if isinstance(event, h11.Request):
        return "accept", ""
    return "refuse", f"unexpected event {type(event).__name__}"


def main():
    for line in sys.stdin:
        case = json.loads(line)
        v, detail = verdict(bytes.fromhex(case["hex"]))
        print(json.dumps({"name": case["name"], "verdict": v, "detail": detail}))


if __name__ == "__main__":
    main()
