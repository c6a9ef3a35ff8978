#!/usr/bin/env python3
"""Bounded load generator for glassbox, standard library only.

Used by scripts/validate-deploy.sh (gateway fail-over test) and scripts/measure-memory.sh
(peak memory of one replica). It sends a fixed, repeatable mix of POST requests from a few
threads, each with its own keep-alive connection, until --duration seconds or --max-requests
requests, whichever comes first, and then stops by itself. Every request gets an
`x-request-id: load-<n>` header so a gateway's access log can be matched against it.

    load.py --url http://127.0.0.1:8080 --mix predict,lime --concurrency 4 --duration 10 \
            --summary out.json [--requests out.jsonl] [--pid PID]

--pid samples VmRSS of that process every 50 ms and reports it with VmHWM (peak resident set)
at the end. The summary (JSON, also printed) counts responses by status and by request kind;
"failed" counts everything that is not a 2xx response, connection errors included.
"""

import argparse
import http.client
import json
import os
import random
import sys
import threading
import time
import urllib.parse

WORDS = (
    "the plot was thin but acting wonderful film story slow dull bright warm cold score music "
    "scene actor director camera light dark long short funny sad brilliant awful great bad "
    "moving boring clever tired fresh stale honest cheap rich poor quiet loud simple messy"
).split()


def text_of(n_words, salt):
    """A deterministic pseudo-sentence; `salt` varies it so the row cache does not answer."""
    rng = random.Random(repr(salt))
    return " ".join(rng.choice(WORDS) for _ in range(n_words)) + "."


# Request kinds: name -> (route, body builder). Sizes are chosen to span what one replica does:
# single short texts, a full batch, maximum-length input, LIME with many samples, attention
# matrices, and a head sweep (72 masked rows).
def kinds():
    return {
        "predict": ("/predict", lambda i: {"text": text_of(12, i)}),
        "predict_batch": ("/predict", lambda i: {"texts": [text_of(30, (i, j)) for j in range(64)]}),
        "predict_long": ("/predict", lambda i: {"text": text_of(700, i), "truncate": True}),
        "lime_small": ("/explain/lime", lambda i: {"text": text_of(12, i), "num_samples": 100, "seed": 7}),
        "lime": ("/explain/lime", lambda i: {"text": text_of(20, i), "num_samples": 500, "seed": 7}),
        "lime_heavy": (
            "/explain/lime",
            lambda i: {"text": text_of(40, i), "num_samples": 1000, "seed": 7},
        ),
        "attention": ("/explain/attention", lambda i: {"text": text_of(40, i), "granularity": "words"}),
        "attention_full": (
            "/explain/attention",
            lambda i: {"text": text_of(250, i), "truncate": True, "aggregation": "none", "layers": [0, 5]},
        ),
        # Worst case for memory: every row of a 512-token text asks for its attention
        # probabilities (6 layers x 12 heads x 512 x 512 floats, 75 MB per row) and such rows
        # from concurrent requests are batched together.
        "attention_long": (
            "/explain/attention",
            lambda i: {"text": text_of(700, i), "truncate": True, "granularity": "words"},
        ),
        "heads_sweep": ("/explain/heads", lambda i: {"text": text_of(16, i), "sweep": "heads"}),
    }


class Rss:
    """Samples VmRSS of a process in the background."""

    def __init__(self, pid):
        self.pid = pid
        self.peak_sampled_kb = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def status(self):
        fields = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
        return fields

    def _run(self):
        while not self._stop.is_set():
            try:
                rss = self.status().get("VmRSS", 0)
            except OSError:
                return
            self.peak_sampled_kb = max(self.peak_sampled_kb, rss)
            self.samples += 1
            self._stop.wait(0.05)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--mix", default="predict,lime", help="comma-separated kinds: " + ",".join(kinds()))
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds (hard bound)")
    ap.add_argument("--max-requests", type=int, default=100000, help="hard bound on requests")
    ap.add_argument("--timeout", type=float, default=40.0, help="per-request socket timeout, seconds")
    ap.add_argument("--summary", help="write the summary JSON here")
    ap.add_argument("--requests", help="write one JSON line per request here")
    ap.add_argument("--pid", type=int, help="sample this process's memory")
    args = ap.parse_args()

    table = kinds()
    mix = [m.strip() for m in args.mix.split(",") if m.strip()]
    unknown = [m for m in mix if m not in table]
    if unknown:
        sys.exit(f"load.py: unknown kinds {unknown}; known: {sorted(table)}")
    url = urllib.parse.urlsplit(args.url)
    host, port = url.hostname, url.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("load.py: only loopback targets are allowed")

    counter = iter(range(args.max_requests))
    counter_lock = threading.Lock()
    results = []
    results_lock = threading.Lock()
    t0 = time.monotonic()
    deadline = t0 + args.duration

    def next_index():
        with counter_lock:
            return next(counter, None)

    def worker():
        conn = None
        while time.monotonic() < deadline:
            i = next_index()
            if i is None:
                break
            name = mix[i % len(mix)]
            route, build = table[name]
            body = json.dumps(build(i)).encode()
            rid = f"load-{i}"
            start = time.monotonic()
            status, error, size = None, None, 0
            # No client-side retry: a request the server or gateway drops counts as failed.
            # A response with "connection: close" makes the next request open a new connection.
            try:
                if conn is None:
                    conn = http.client.HTTPConnection(host, port, timeout=args.timeout)
                conn.request(
                    "POST",
                    route,
                    body=body,
                    headers={"content-type": "application/json", "x-request-id": rid},
                )
                resp = conn.getresponse()
                payload = resp.read()
                status, size = resp.status, len(payload)
                if resp.getheader("connection", "").lower() == "close":
                    conn.close()
                    conn = None
            except (OSError, http.client.HTTPException) as e:
                if conn is not None:
                    conn.close()
                conn = None
                error = f"{type(e).__name__}: {e}"
            end = time.monotonic()
            with results_lock:
                results.append(
                    {
                        "id": rid,
                        "kind": name,
                        "route": route,
                        "start": round(start - t0, 4),
                        "end": round(end - t0, 4),
                        "status": status,
                        "bytes": size,
                        "error": error,
                    }
                )
        if conn is not None:
            conn.close()

    rss = Rss(args.pid) if args.pid else None
    if rss:
        rss.start()
    threads = [threading.Thread(target=worker) for _ in range(args.concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0

    by_status, by_kind, errors = {}, {}, {}
    for r in results:
        key = str(r["status"]) if r["status"] is not None else "error"
        by_status[key] = by_status.get(key, 0) + 1
        k = by_kind.setdefault(r["kind"], {"n": 0, "latencies": []})
        k["n"] += 1
        k["latencies"].append(r["end"] - r["start"])
        if r["error"]:
            errors[r["error"]] = errors.get(r["error"], 0) + 1
    kinds_summary = {}
    for name, k in by_kind.items():
        lat = sorted(k["latencies"])
        kinds_summary[name] = {
            "n": k["n"],
            "p50_ms": round(1000 * lat[len(lat) // 2], 1),
            "max_ms": round(1000 * lat[-1], 1),
        }
    summary = {
        "url": args.url,
        "mix": mix,
        "concurrency": args.concurrency,
        "elapsed_s": round(elapsed, 2),
        "requests": len(results),
        "ok": sum(1 for r in results if r["status"] is not None and 200 <= r["status"] < 300),
        "failed": sum(1 for r in results if r["status"] is None or not 200 <= r["status"] < 300),
        "by_status": by_status,
        "by_kind": kinds_summary,
        "errors": errors,
    }
    if rss:
        rss.stop()
        try:
            st = rss.status()
            summary["memory"] = {
                "pid": args.pid,
                "vm_hwm_kb": st.get("VmHWM"),
                "vm_rss_end_kb": st.get("VmRSS"),
                "peak_sampled_rss_kb": rss.peak_sampled_kb,
                "samples": rss.samples,
            }
        except OSError as e:
            summary["memory"] = {"pid": args.pid, "error": str(e)}
    if args.requests:
        with open(args.requests, "w") as f:
            for r in sorted(results, key=lambda r: r["start"]):
                f.write(json.dumps(r) + "\n")
    text = json.dumps(summary, indent=2)
    if args.summary:
        with open(args.summary, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
