#!/usr/bin/env python3
"""Serving throughput of an OpenAI-compatible server (tern serve or llama.cpp's llama-server).

    python3 scripts/serve_bench.py --url http://127.0.0.1:8080 [--streams 1,4,8,16]
                                   [--requests 3] [--max-tokens 64] [--prompt-tokens N] [--json]

For each number of concurrent streams S, S clients each send REQUESTS streaming text completions
one after another (the same prompt after a number unique to the request, so no prompt cache helps;
greedy, `ignore_eos` so every reply is MAX_TOKENS long) and
the script reports the aggregate generated tokens per second (all replies' tokens over the wall
time of the level) and the time to first token (median and worst, from sending the request to
the first streamed chunk). One warm-up request runs first. Standard library only.

The prompt is a sentence by default, as many tokens as the server's tokenizer makes of it (57 in
the small tokenizer of tern's random bench files, fewer in a full-size one). --prompt-tokens N sends N
token ids instead (OpenAI's token-array prompt, which llama-server takes too), so servers with
different tokenizers get the same work.
"""

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"


def prompt(n, tokens):
    """Request `n`'s prompt: the sentence after its number, or `tokens` token ids from a stream
    seeded by it, so no server can reuse another request's cached prompt (llama-server would)."""
    if not tokens:
        return f"{n}. {PROMPT}"
    x = n * 2654435761 % 2**32 or 1
    ids = []
    for _ in range(tokens):
        x = x * 1103515245 + 12345 & 0x7FFFFFFF
        ids.append(1000 + x % 20000)  # ordinary ids: inside every bench file's vocabulary
    return ids


def one_request(url, max_tokens, key, n=0, prompt_tokens=0):
    """One streamed completion: (generated tokens, seconds to the first chunk, total seconds)."""
    u = urlparse(url)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    body = {"prompt": prompt(n, prompt_tokens), "max_tokens": max_tokens, "temperature": 0, "stream": True, "ignore_eos": True,
            "stream_options": {"include_usage": True}}
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    t0 = time.time()
    c.request("POST", "/v1/completions", body=json.dumps(body), headers=headers)
    r = c.getresponse()
    if r.status != 200:
        raise RuntimeError(f"status {r.status}: {r.read()[:300]!r}")
    first, tokens, finish = None, None, None
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            break
        chunk = json.loads(line[6:])
        if first is None and chunk.get("choices"):
            first = time.time() - t0
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices", []):
            finish = choice.get("finish_reason") or finish
    total = time.time() - t0
    if tokens is None:
        tokens = max_tokens if finish == "length" else None
    if tokens is None:
        raise RuntimeError(f"cannot tell how many tokens were generated (finish {finish})")
    return tokens, first, total


def level(url, streams, requests, max_tokens, key, prompt_tokens):
    results, errors = [], []

    def client(c):
        for r in range(requests):
            try:
                results.append(one_request(url, max_tokens, key, 1000 * streams + requests * c + r, prompt_tokens))
            except Exception as e:  # noqa: BLE001 — reported, not hidden
                errors.append(str(e))

    threads = [threading.Thread(target=client, args=(c,)) for c in range(streams)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.time() - t0
    if errors:
        raise RuntimeError(f"{len(errors)} requests failed: {errors[0]}")
    tokens = sum(r[0] for r in results)
    ttft = [r[1] for r in results]
    return {"streams": streams, "requests": len(results), "generated_tokens": tokens, "seconds": round(wall, 2),
            "tokens_per_second": round(tokens / wall, 2), "ttft_median_s": round(statistics.median(ttft), 3),
            "ttft_max_s": round(max(ttft), 3),
            "per_stream_tokens_per_second": round(statistics.median(r[0] / (r[2] - r[1]) for r in results), 2)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--streams", default="1,4,8,16")
    ap.add_argument("--requests", type=int, default=3, help="requests per stream and level")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=0,
                    help="send this many token ids as each prompt instead of the sentence")
    ap.add_argument("--api-key")
    ap.add_argument("--label", default="", help="a name for the server, printed beside the figures")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    one_request(args.url, 8, args.api_key, 0, args.prompt_tokens)
    rows = []
    for s in [int(x) for x in args.streams.split(",")]:
        row = level(args.url, s, args.requests, args.max_tokens, args.api_key, args.prompt_tokens)
        rows.append(row)
        print(f"{args.label} {s:>3} streams: {row['tokens_per_second']:7.2f} t/s aggregate, "
              f"{row['per_stream_tokens_per_second']:6.2f} t/s per stream, TTFT median {row['ttft_median_s']:.3f} s "
              f"(max {row['ttft_max_s']:.3f}), {row['requests']} requests in {row['seconds']} s", file=sys.stderr)
    if args.json:
        print(json.dumps({"label": args.label, "max_tokens": args.max_tokens, "prompt_tokens": args.prompt_tokens or None,
                          "levels": rows}, indent=2))


if __name__ == "__main__":
    main()
