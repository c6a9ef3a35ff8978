#!/usr/bin/env python3
"""Load and soak test of one glassbox server (standard library only; run by scripts/stress.sh).

Phases:
1. Reference: every request template once, serially, on the idle server. These answers are
   the truth the loaded answers are checked against, and their latencies give the server's
   serial capacity (requests per second of the mix, one at a time).
2. Load: open-loop arrivals (exponential gaps) at `--overload` x that capacity (default 2x)
   for `--duration` seconds, the template of each arrival drawn at random (seeded). Every
   answer must be either the reference answer (probabilities and every number of the
   explanation within `--tolerance`; same seed, same explanation) or a documented refusal:
   429 `rate_limited`, 503 `overloaded`/`not_ready`, 504 `timeout`, with the error shape. A
   request that gets no answer within the client timeout (the server's deadline + 20 s) is a
   hang. The server's resident set (VmRSS) is sampled all along.
3. Recovery: /ready is 200 and every template again gives its reference answer.

Pass: no wrong answer, no undocumented status, no hang, no transport error, peak RSS under
`--max-rss-mib`, and no growth of the resident set in the second half of the load (mean RSS
of the last quarter within 10% or 32 MiB of the second quarter's). Prints a summary and
writes it as JSON; the exit status is 0 only on a pass.
"""

import argparse
import http.client
import json
import math
import os
import random
import statistics
import sys
import threading
import time

DOCUMENTED_REFUSALS = {429: {"rate_limited"}, 503: {"overloaded", "not_ready"}, 504: {"timeout"}}

TEXTS = [
    "Absolutely loved this movie.",
    "The soup was cold and the waiter was rude.",
    "Not bad at all, actually quite enjoyable.",
    "The plot was thin but the acting was wonderful, and the music carried every scene.",
    "The charger stopped working after two days.",
    "This blender is powerful, quiet, and easy to clean.",
]


def templates(lime_samples):
    """The mix: (kind, path, body). Each kind appears for several texts."""
    out = []
    for i, text in enumerate(TEXTS):
        out.append(("predict", "/predict", {"text": text}))
        if i % 2 == 0:
            out.append(("predict_batch", "/predict", {"texts": TEXTS[i:i + 3]}))
            out.append(("attention", "/explain/attention",
                        {"text": text, "granularity": "words", "layers": [0, 5], "precision": 6}))
        else:
            out.append(("lime", "/explain/lime",
                        {"text": text, "num_samples": lime_samples, "seed": 7 + i}))
            out.append(("occlusion", "/explain/occlusion", {"text": text}))
    return out


def request(port, path, body, timeout):
    """(status, parsed body or None, seconds, error string or None)."""
    payload = json.dumps(body).encode()
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", path, payload, {"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
        elapsed = time.monotonic() - started
        try:
            parsed = json.loads(raw)
        except ValueError:
            parsed = None
        return response.status, parsed, elapsed, None
    except TimeoutError:
        return None, None, time.monotonic() - started, "client timeout (hang)"
    except OSError as e:
        return None, None, time.monotonic() - started, f"transport: {e!r}"
    finally:
        conn.close()


def get_status(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        r.read()
        return r.status
    except OSError:
        return None
    finally:
        conn.close()


IGNORED = {"usage"}


def differences(want, got, tol, where="", out=None, limit=5):
    """Where `got` differs from `want`: numbers beyond `tol`, anything else not equal."""
    if out is None:
        out = []
    if len(out) >= limit:
        return out
    if isinstance(want, bool) or isinstance(got, bool):
        if type(want) is not type(got) or want != got:
            out.append(f"{where}: {want!r} != {got!r}")
    elif isinstance(want, (int, float)) and isinstance(got, (int, float)):
        if not math.isclose(want, got, rel_tol=0.0, abs_tol=tol):
            out.append(f"{where}: {want} vs {got} (diff {abs(want - got):.3g})")
    elif isinstance(want, dict) and isinstance(got, dict):
        if set(want) != set(got):
            out.append(f"{where}: keys {sorted(set(want) ^ set(got))} differ")
        for k in want:
            if k in got and k not in IGNORED:
                differences(want[k], got[k], tol, f"{where}.{k}", out, limit)
    elif isinstance(want, list) and isinstance(got, list):
        if len(want) != len(got):
            out.append(f"{where}: length {len(want)} != {len(got)}")
        else:
            for i, (a, b) in enumerate(zip(want, got)):
                differences(a, b, tol, f"{where}[{i}]", out, limit)
    elif want != got:
        out.append(f"{where}: {want!r} != {got!r}")
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def percentile(values, q):
    if not values:
        return None
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def ms(seconds):
    return None if seconds is None else round(seconds * 1e3, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", type=int, required=True, help="the server's pid, for VmRSS")
    ap.add_argument("--duration", type=float, default=90.0)
    ap.add_argument("--overload", type=float, default=2.0, help="offered load / serial capacity")
    ap.add_argument("--lime-samples", type=int, default=100)
    ap.add_argument("--request-timeout-ms", type=int, required=True, help="the server's deadline")
    ap.add_argument("--max-in-flight", type=int, default=96)
    ap.add_argument("--tolerance", type=float, default=1e-5)
    ap.add_argument("--max-rss-mib", type=float, default=1024.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--server-settings", default="{}", help="JSON, copied into the summary")
    ap.add_argument("--out", required=True, help="where to write the JSON summary")
    args = ap.parse_args()
    load_at_start = os.getloadavg()

    rng = random.Random(args.seed)
    client_timeout = args.request_timeout_ms / 1e3 + 20.0
    mix = templates(args.lime_samples)

    # 1. Reference answers, serially.
    references, serial = [], []
    for kind, path, body in mix:
        status, answer, elapsed, error = request(args.port, path, body, client_timeout)
        if status != 200:
            sys.exit(f"stress: reference {kind} {body} failed: {status} {error} {answer}")
        references.append(answer)
        serial.append(elapsed)
    capacity_rps = len(serial) / sum(serial)
    rate = args.overload * capacity_rps
    print(f"stress: serial capacity {capacity_rps:.2f} req/s over {len(mix)} templates; "
          f"offering {rate:.2f} req/s ({args.overload}x) for {args.duration:.0f} s", file=sys.stderr)

    # 2. Load.
    results = []  # (t_start, kind, status, code, latency, verdict)
    lock = threading.Lock()
    in_flight = threading.BoundedSemaphore(args.max_in_flight)
    not_sent = [0]
    rss = []
    stop = threading.Event()

    def sample_rss(t0):
        while not stop.is_set():
            value = rss_kib(args.pid)
            if value is not None:
                rss.append((time.monotonic() - t0, value))
            stop.wait(0.25)

    def one(index, t_start):
        kind, path, body = mix[index]
        try:
            status, answer, elapsed, error = request(args.port, path, body, client_timeout)
            code = None
            if error is not None:
                verdict = "hang" if "timeout" in error else "transport_error"
                code = error
            elif status == 200:
                diffs = differences(references[index], answer, args.tolerance)
                verdict = "correct" if not diffs else "wrong_answer"
                code = "; ".join(diffs) if diffs else None
            else:
                code = (answer or {}).get("error", {}).get("code") if isinstance(answer, dict) else None
                ok = status in DOCUMENTED_REFUSALS and code in DOCUMENTED_REFUSALS[status]
                verdict = "refused" if ok else "undocumented"
            with lock:
                results.append((t_start, kind, status, code, elapsed, verdict))
        finally:
            in_flight.release()

    t0 = time.monotonic()
    sampler = threading.Thread(target=sample_rss, args=(t0,), daemon=True)
    sampler.start()
    threads = []
    next_at = 0.0
    while next_at < args.duration:
        delay = t0 + next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        index = rng.randrange(len(mix))
        if in_flight.acquire(blocking=False):
            t = threading.Thread(target=one, args=(index, next_at), daemon=True)
            t.start()
            threads.append(t)
        else:
            not_sent[0] += 1
        next_at += rng.expovariate(rate)
    for t in threads:
        t.join(client_timeout + 5)
    load_s = time.monotonic() - t0
    stop.set()
    sampler.join()
    stuck = sum(t.is_alive() for t in threads)

    # 3. Recovery.
    ready = get_status(args.port, "/ready")
    recovery_wrong = []
    for index, (kind, path, body) in enumerate(mix):
        status, answer, _, error = request(args.port, path, body, client_timeout)
        diffs = differences(references[index], answer, args.tolerance) if status == 200 else [f"{status} {error}"]
        if diffs:
            recovery_wrong.append({"kind": kind, "problems": diffs})

    # Summary.
    by_status, by_verdict, by_kind = {}, {}, {}
    for _, kind, status, code, elapsed, verdict in results:
        key = str(status) if status is not None else "none"
        by_status[key] = by_status.get(key, 0) + 1
        by_verdict[verdict] = by_verdict.get(verdict, 0) + 1
        k = by_kind.setdefault(kind, {"n": 0, "ok": 0, "latencies_ok": []})
        k["n"] += 1
        if verdict == "correct":
            k["ok"] += 1
            k["latencies_ok"].append(elapsed)
    all_latencies = [r[4] for r in results if r[2] is not None]
    ok_latencies = [r[4] for r in results if r[5] == "correct"]
    refused_latencies = [r[4] for r in results if r[5] == "refused"]
    kinds = {
        kind: {"n": k["n"], "correct": k["ok"], "p50_ms": ms(percentile(k["latencies_ok"], 0.5)),
               "p99_ms": ms(percentile(k["latencies_ok"], 0.99))}
        for kind, k in sorted(by_kind.items())
    }
    problems = [
        {"t_s": round(t, 2), "kind": kind, "status": status, "detail": code, "verdict": verdict}
        for t, kind, status, code, _, verdict in results
        if verdict not in ("correct", "refused")
    ][:20]

    def quarter_mean(q):
        lo, hi = args.duration * q / 4, args.duration * (q + 1) / 4
        values = [v for t, v in rss if lo <= t < hi]
        return statistics.mean(values) / 1024 if values else None

    peak_mib = max((v for _, v in rss), default=0) / 1024
    q2, q4 = quarter_mean(1), quarter_mean(3)
    growth_mib = (q4 - q2) if q2 is not None and q4 is not None else None
    grows = growth_mib is not None and growth_mib > max(32.0, 0.10 * q2)
    failures = []
    if by_verdict.get("wrong_answer"):
        failures.append(f"{by_verdict['wrong_answer']} wrong answers")
    if by_verdict.get("undocumented"):
        failures.append(f"{by_verdict['undocumented']} undocumented statuses")
    if by_verdict.get("hang") or stuck:
        failures.append(f"{by_verdict.get('hang', 0)} hangs, {stuck} client threads stuck")
    if by_verdict.get("transport_error"):
        failures.append(f"{by_verdict['transport_error']} transport errors")
    if ready != 200:
        failures.append(f"/ready answered {ready} after the load")
    if recovery_wrong:
        failures.append(f"{len(recovery_wrong)} templates wrong after the load")
    if peak_mib > args.max_rss_mib:
        failures.append(f"peak RSS {peak_mib:.0f} MiB over {args.max_rss_mib:.0f} MiB")
    if grows:
        failures.append(f"RSS grew {growth_mib:.0f} MiB in the second half")
    if not by_verdict.get("correct"):
        failures.append("no request succeeded under load")

    summary = {
        "passed": not failures,
        "failures": failures,
        "settings": {
            "duration_s": args.duration, "overload": args.overload, "lime_samples": args.lime_samples,
            "tolerance": args.tolerance, "max_in_flight": args.max_in_flight, "seed": args.seed,
            "client_timeout_s": client_timeout, "server": json.loads(args.server_settings),
            "cpus": os.cpu_count(), "load_average_at_start": load_at_start,
        },
        "templates": len(mix),
        "serial_ms": {"mean": ms(statistics.mean(serial)), "max": ms(max(serial))},
        "serial_capacity_rps": round(capacity_rps, 3),
        "offered_rps": round(rate, 3),
        "load_s": round(load_s, 1),
        "requests": len(results),
        "not_sent_client_in_flight_cap": not_sent[0],
        "by_status": dict(sorted(by_status.items())),
        "by_verdict": dict(sorted(by_verdict.items())),
        "answered_rps": round(len(results) / load_s, 2) if load_s else None,
        "correct_rps": round(by_verdict.get("correct", 0) / load_s, 2) if load_s else None,
        "latency_ms": {
            "all": {"p50": ms(percentile(all_latencies, 0.5)), "p99": ms(percentile(all_latencies, 0.99)),
                    "max": ms(max(all_latencies, default=None) if all_latencies else None)},
            "correct": {"p50": ms(percentile(ok_latencies, 0.5)), "p99": ms(percentile(ok_latencies, 0.99))},
            "refused": {"p50": ms(percentile(refused_latencies, 0.5)),
                        "p99": ms(percentile(refused_latencies, 0.99))},
        },
        "by_kind": kinds,
        "rss_mib": {
            "samples": len(rss), "peak": round(peak_mib, 1),
            "mean_q1": quarter_mean(0) and round(quarter_mean(0), 1),
            "mean_q2": q2 and round(q2, 1), "mean_q3": quarter_mean(2) and round(quarter_mean(2), 1),
            "mean_q4": q4 and round(q4, 1),
            "growth_second_half": growth_mib and round(growth_mib, 1),
        },
        "ready_after": ready,
        "recovery_problems": recovery_wrong,
        "problems": problems,
        "load_average_at_end": os.getloadavg(),
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")

    lat = summary["latency_ms"]
    print(f"requests {len(results)} in {load_s:.0f} s at {rate:.1f} req/s offered "
          f"({args.overload}x serial capacity {capacity_rps:.2f} req/s); not sent (client cap) {not_sent[0]}")
    print(f"by status  {summary['by_status']}")
    print(f"by verdict {summary['by_verdict']}")
    print(f"latency all p50 {lat['all']['p50']} ms p99 {lat['all']['p99']} ms; "
          f"correct p50 {lat['correct']['p50']} ms p99 {lat['correct']['p99']} ms; "
          f"refused p50 {lat['refused']['p50']} ms p99 {lat['refused']['p99']} ms")
    for kind, k in kinds.items():
        print(f"  {kind:14s} n={k['n']:5d} correct={k['correct']:5d}  p50 {k['p50_ms']} ms  p99 {k['p99_ms']} ms")
    r = summary["rss_mib"]
    print(f"RSS peak {r['peak']} MiB; quarter means {r['mean_q1']} / {r['mean_q2']} / {r['mean_q3']} / "
          f"{r['mean_q4']} MiB; second-half growth {r['growth_second_half']} MiB")
    print(f"after the load: /ready {ready}, templates wrong {len(recovery_wrong)}")
    print("PASS" if not failures else "FAIL: " + "; ".join(failures))
    print(f"summary: {args.out}")
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
