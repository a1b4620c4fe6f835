#!/usr/bin/env python3
"""Bounded load test of `tern serve` on loopback (standard library only).

    python3 scripts/load_test.py MODEL.gguf [--tern target/release/tern] [--clients 16]
                                 [--requests 20] [--parallel 8] [--max-tokens 32] [--json]

Starts `tern serve MODEL` on a free port and runs two phases:

1. Load: CLIENTS concurrent streaming clients send REQUESTS chat or text completions each. Every
   response must be 200 and complete (a finish reason, a usage chunk, `[DONE]`). The server's
   resident memory (VmRSS) is sampled throughout; its mean over the last quarter of the phase
   must be within 5 % (or 16 MiB) of the first quarter's.
2. Hostile clients, while ordinary requests keep running: a body sent a byte at a time (served),
   a body that stops arriving (408), clients that disconnect mid-stream, a 1 MB body (413),
   malformed JSON (400), a wrong API key (401). /health must answer throughout, and every
   ordinary request sent after them must be served.

Exits 0 when every check passes, 1 otherwise; prints a summary (and JSON with --json).
"""

import argparse
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

KEY = "load-test-key"
PROMPTS = [
    "It is a truth universally acknowledged, that",
    "Call me Ishmael.",
    "Emma Woodhouse, handsome, clever, and rich,",
    "The whale",
    "Mr. Darcy walked into the room and said",
    "Upon the deck of the Pequod, the captain stood silent while the crew",
]


class Server:
    def __init__(self, args):
        cmd = [args.tern, "serve", args.model, "--port", "0", "--parallel", str(args.parallel),
               "--api-key", KEY, "--body-timeout", "5", "--queue", str(4 * args.clients), "--quiet"]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.log = []
        for line in self.proc.stderr:
            self.log.append(line)
            m = re.match(r"listening on http://([\d.]+):(\d+)", line)
            if m:
                self.host, self.port = m.group(1), int(m.group(2))
                break
        else:
            sys.exit("tern serve did not start:\n" + "".join(self.log))
        threading.Thread(target=lambda: self.log.extend(self.proc.stderr), daemon=True).start()
        deadline = time.time() + 120
        while self.health() != 200:
            if time.time() > deadline:
                sys.exit("tern serve never became ready:\n" + "".join(self.log))
            time.sleep(0.1)

    def conn(self, timeout=300):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def health(self):
        try:
            c = self.conn(timeout=5)
            c.request("GET", "/health")
            return c.getresponse().status
        except OSError:
            return None

    def rss_kib(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def metric(self, name):
        c = self.conn()
        c.request("GET", "/metrics", headers={"Authorization": f"Bearer {KEY}"})
        for line in c.getresponse().read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def stop(self):
        self.proc.terminate()
        return self.proc.wait(timeout=120)


def body_for(i, max_tokens, stream=True):
    prompt = PROMPTS[i % len(PROMPTS)]
    common = {"max_tokens": max_tokens, "temperature": 0.7, "seed": i, "stream": stream}
    if stream:
        common["stream_options"] = {"include_usage": True}
    if i % 2:
        return "/v1/chat/completions", {"messages": [{"role": "user", "content": prompt}], **common}
    return "/v1/completions", {"prompt": prompt, **common}


def streamed_request(server, i, max_tokens):
    """One complete streaming request; returns (ok, reason, seconds to the first token)."""
    path, body = body_for(i, max_tokens)
    t0 = time.time()
    c = server.conn()
    c.request("POST", path, body=json.dumps(body),
              headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    r = c.getresponse()
    if r.status != 200:
        return False, f"status {r.status}: {r.read()[:200]!r}", None
    first, finish, usage, done = None, None, None, False
    for raw in r:
        line = raw.decode().strip()
        if not line.startswith("data: "):
            continue
        data = line[6:]
        if data == "[DONE]":
            done = True
            break
        chunk = json.loads(data)
        if "error" in chunk:
            return False, f"error event {chunk['error']}", None
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices", []):
            if first is None and (choice.get("text") or choice.get("delta", {}).get("content")):
                first = time.time() - t0
            finish = choice.get("finish_reason") or finish
    if not done or finish is None or usage is None:
        return False, f"truncated: done={done} finish={finish} usage={usage}", first
    if not 0 < usage["completion_tokens"] <= max_tokens:
        return False, f"usage {usage}", first
    return True, "", first


def load_phase(server, args, report):
    failures, lock = [], threading.Lock()
    samples = []  # (time, rss KiB)
    running = threading.Event()
    running.set()

    def sample():
        while running.is_set():
            samples.append((time.time(), server.rss_kib()))
            time.sleep(0.1)

    def client(k):
        for j in range(args.requests):
            ok, why, _ = streamed_request(server, k * args.requests + j, args.max_tokens)
            if not ok:
                with lock:
                    failures.append(f"client {k} request {j}: {why}")

    sampler = threading.Thread(target=sample, daemon=True)
    t0 = time.time()
    sampler.start()
    threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    running.clear()
    sampler.join()
    t1 = time.time()
    quarter = (t1 - t0) / 4
    first = [r for t, r in samples if t < t0 + quarter]
    last = [r for t, r in samples if t >= t1 - quarter]
    first_mib, last_mib = sum(first) / len(first) / 1024, sum(last) / len(last) / 1024
    flat = last_mib <= max(first_mib * 1.05, first_mib + 16)
    total = args.clients * args.requests
    report["load"] = {"requests": total, "failed": len(failures), "seconds": round(t1 - t0, 1),
                      "generated_tokens": server.metric("tern_generated_tokens_total"),
                      "rss_first_quarter_mib": round(first_mib, 1), "rss_last_quarter_mib": round(last_mib, 1),
                      "rss_peak_mib": round(max(r for _, r in samples) / 1024, 1), "rss_flat": flat,
                      "failures": failures[:10]}
    return not failures and flat


def raw_request(server, head, body=b"", slow=None):
    """Sends a request over a plain socket (optionally `slow` seconds per byte of body)."""
    s = socket.create_connection((server.host, server.port), timeout=60)
    s.sendall(head.encode())
    for i in range(len(body)):
        if slow is None:
            s.sendall(body)
            break
        s.sendall(body[i:i + 1])
        time.sleep(slow)
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    return int(data.split(b" ", 2)[1]) if data else None


def post_head(path, length, key=KEY):
    return (f"POST {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {key}\r\nContent-Length: {length}\r\n\r\n")


def hostile_phase(server, args, report):
    results = {}
    lock = threading.Lock()

    def record(name, got, want):
        with lock:
            results[name] = {"status": got, "expected": want, "ok": got == want}

    def slow_body():
        body = json.dumps({"prompt": "The whale", "max_tokens": 4}).encode()
        record("slow body, a byte per 50 ms", raw_request(server, post_head("/v1/completions", len(body)), body, 0.05), 200)

    def stalled_body():
        s = socket.create_connection((server.host, server.port), timeout=60)
        s.sendall(post_head("/v1/completions", 100).encode() + b'{"prompt"')
        data = s.recv(65536)
        s.close()
        record("body stops arriving", int(data.split(b" ", 2)[1]) if data else None, 408)

    def disconnect(i):
        path, body = body_for(i, 200)
        c = server.conn()
        c.request("POST", path, body=json.dumps(body),
                  headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
        r = c.getresponse()
        events = 0
        for raw in r:
            if raw.startswith(b"data: "):
                events += 1
                if events == 3:
                    break
        c.sock.close()
        record(f"disconnect mid-stream {i}", r.status, 200)

    def big_body():
        body = b'{"prompt": "' + b"a" * 1_000_000 + b'"}'
        record("1 MB body", raw_request(server, post_head("/v1/completions", len(body)), body), 413)

    def malformed():
        body = b'{"messages": [{"role": "user", "content": "hi"'
        record("malformed JSON", raw_request(server, post_head("/v1/chat/completions", len(body)), body), 400)

    def bad_key():
        body = json.dumps({"prompt": "x"}).encode()
        record("wrong API key", raw_request(server, post_head("/v1/completions", len(body), "nope"), body), 401)

    health = []
    watching = threading.Event()
    watching.set()

    def watch_health():
        while watching.is_set():
            health.append(server.health())
            time.sleep(0.2)

    ordinary_failures = []

    def ordinary(k):
        for j in range(3):
            ok, why, _ = streamed_request(server, 1000 + 10 * k + j, args.max_tokens)
            if not ok:
                ordinary_failures.append(why)

    cancelled_before = server.metric("tern_cancelled_total")
    watcher = threading.Thread(target=watch_health, daemon=True)
    watcher.start()
    jobs = [slow_body, stalled_body, big_body, malformed, bad_key] + [lambda i=i: disconnect(i) for i in range(8)]
    jobs += [lambda k=k: ordinary(k) for k in range(4)]
    threads = [threading.Thread(target=j) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    watching.clear()
    watcher.join()
    # Everyone after the hostile clients is served.
    after_failures = []

    def after(k):
        ok, why, _ = streamed_request(server, 2000 + k, args.max_tokens)
        if not ok:
            after_failures.append(why)

    threads = [threading.Thread(target=after, args=(k,)) for k in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    health_ok = all(h == 200 for h in health)
    cancelled = server.metric("tern_cancelled_total") - cancelled_before
    report["hostile"] = {"cases": results, "health_checks": len(health), "health_always_ok": health_ok,
                         "ordinary_during_failures": ordinary_failures, "after_failures": after_failures,
                         "slots_freed_by_disconnects": cancelled}
    return (all(r["ok"] for r in results.values()) and health_ok and not ordinary_failures
            and not after_failures and cancelled >= 8)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model")
    ap.add_argument("--tern", default=os.path.join(os.path.dirname(__file__), "../target/release/tern"))
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--threads", type=int)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    server = Server(args)
    report = {"model": args.model, "clients": args.clients, "requests_per_client": args.requests,
              "parallel": args.parallel, "max_tokens": args.max_tokens}
    try:
        load_ok = load_phase(server, args, report)
        print(f"load: {report['load']['requests']} streamed requests, {report['load']['failed']} failed, "
              f"{report['load']['seconds']} s; RSS {report['load']['rss_first_quarter_mib']} MiB first quarter, "
              f"{report['load']['rss_last_quarter_mib']} MiB last quarter "
              f"({'flat' if report['load']['rss_flat'] else 'GREW'}), peak {report['load']['rss_peak_mib']} MiB",
              file=sys.stderr)
        hostile_ok = hostile_phase(server, args, report)
        h = report["hostile"]
        for name, r in h["cases"].items():
            print(f"  {name}: {r['status']} (expected {r['expected']})", file=sys.stderr)
        print(f"hostile: /health answered {h['health_checks']} checks "
              f"{'all 200' if h['health_always_ok'] else 'NOT ALWAYS 200'}; "
              f"{len(h['ordinary_during_failures'])} ordinary requests failed during, "
              f"{len(h['after_failures'])} after; {h['slots_freed_by_disconnects']:.0f} slots freed by disconnects",
              file=sys.stderr)
    finally:
        report["exit_code"] = server.stop()
    ok = load_ok and hostile_ok and report["exit_code"] == 0
    report["passed"] = ok
    if args.json:
        print(json.dumps(report, indent=2))
    print("PASS" if ok else "FAIL", file=sys.stderr)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
