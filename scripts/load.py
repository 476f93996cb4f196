#!/usr/bin/env python3
"""Load test for `kiln serve`: N concurrent streaming clients on
/v1/completions, each asking for M tokens (ignore_eos), and the aggregate
decode rate they see. Standard library only, so it runs anywhere the
server does.

    python3 scripts/load.py --url http://127.0.0.1:11435 --clients 8 --tokens 128

Prints one JSON line: clients, tokens each, wall seconds, aggregate tok/s
(every completion token over the wall time from the first request to the
last stream's end), and the median / max time to first token.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
import urllib.parse


def client(url, i, tokens, out):
    u = urllib.parse.urlparse(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = json.dumps({
        "prompt": f"Story number {i}: once upon a time",
        "max_tokens": tokens,
        "temperature": 0.7,
        "seed": i,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    })
    start = time.monotonic()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        out[i] = {"error": resp.status, "body": resp.read().decode(errors="replace")}
        return
    first, usage, done = None, None, False
    for raw in resp:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[len("data: "):]
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if first is None and chunk.get("choices"):
            first = time.monotonic() - start
        if chunk.get("usage"):
            usage = chunk["usage"]
    out[i] = {
        "ttft": first,
        "end": time.monotonic(),
        "tokens": usage["completion_tokens"] if usage else 0,
        "done": done,
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", default="http://127.0.0.1:11435")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--tokens", type=int, default=128)
    a = p.parse_args()
    out = [None] * a.clients
    threads = [threading.Thread(target=client, args=(a.url, i, a.tokens, out))
               for i in range(a.clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bad = [o for o in out if o is None or "error" in o or not o["done"]]
    if bad:
        print(json.dumps({"failed": len(bad), "first": bad[0]}))
        sys.exit(1)
    wall = max(o["end"] for o in out) - start
    total = sum(o["tokens"] for o in out)
    ttft = [o["ttft"] for o in out]
    print(json.dumps({
        "clients": a.clients,
        "tokens_each": a.tokens,
        "wall_s": round(wall, 3),
        "aggregate_tok_s": round(total / wall, 1),
        "ttft_median_s": round(statistics.median(ttft), 4),
        "ttft_max_s": round(max(ttft), 4),
    }))


if __name__ == "__main__":
    main()
