"""Integrated gradients end to end, side by side: glassbox's POST /explain/gradients over HTTP
against Captum's LayerIntegratedGradients, plus what `evaluate = true` costs.

Run by scripts/bench-ig.sh with the baseline venv's python (torch, transformers, captum). The
glassbox server must already be running (release build, row cache off).

The Captum side is bench/python/bench_ig.py's measurement, call for call: the same zero-shot
classifier (classifier.py), 2 threads (benchutil), ``LayerIntegratedGradients`` at the
word embeddings, baseline [PAD] at every non-special position, 50 Gauss-Legendre steps in one
internal batch of 50, the predicted label's probability, with the convergence delta; model
parameters with ``requires_grad=False`` by default (``--param-grads true`` for the naive
setting, where backward also computes weight gradients). glassbox gets
``{"text", "method": "integrated_gradients", "steps": 50}`` (same baseline, nodes, target and
output). The two run alternately, one explanation each, ``--reps`` times per text, after an
untimed warm-up of both; every run records the CPU that other processes used meanwhile and
the load average (scripts/bench_lime_compare.py's Monitor).

Then the cost of ``evaluate = true``: the same gradients request with ``"granularity": "words",
"evaluate": true`` against without, and ``POST /explain/lime`` (1000 samples, fixed seed) with
and without ``evaluate``: extra seconds and extra model rows.

Output: JSON lines (``--out``), then two Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "bench", "python"))

import benchutil as bu  # noqa: E402
from bench_lime_compare import emitter, post, settled, timed  # noqa: E402


def median_s(runs: list, max_other: float) -> float:
    return statistics.median(r["seconds"] for r in settled(runs, max_other))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir")
    ap.add_argument("--url", required=True)
    ap.add_argument("--server-pid", type=int, required=True)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--param-grads", choices=["false", "true"], default="false")
    ap.add_argument("--text", nargs="+", default=None, help="default: bench_lime.py's 3 texts")
    ap.add_argument("--max-other", type=float, default=0.10)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--max-wait", type=float, default=30.0)
    ap.add_argument("--lime-samples", type=int, default=1000)
    ap.add_argument("--skip-evaluate", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args()

    emit = emitter(a.out)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    from bench_ig import build_ig, explain
    from bench_lime import TEXTS
    from classifier import ZeroShotSentiment, load_model

    texts = a.text or TEXTS
    thr = bu.setup_threads(a.threads)
    tok, model = load_model(a.model_dir)
    clf = ZeroShotSentiment(tok, model)
    lig, inputs = build_ig(clf)
    param_grads = a.param_grads == "true"
    for p in model.parameters():
        p.requires_grad_(param_grads)
    info = json.loads(urllib.request.urlopen(a.url + "/info", timeout=30).read())
    emit(bu.environment_info({"script": "bench_ig_compare.py", **thr, "glassbox_info": info,
                              "param_grads": param_grads, "steps": a.steps}))

    def glassbox(text, **extra):
        return post(a.url, "/explain/gradients",
                    {"text": text, "method": "integrated_gradients", "steps": a.steps, **extra})

    def captum(text):
        out = explain(clf, lig, inputs, text, a.steps, a.steps)
        model.zero_grad(set_to_none=True)
        return out

    for text in texts:  # untimed warm-up of both sides
        glassbox(text)
        captum(text)

    ig_rows = []
    for text in texts:
        runs = {"glassbox": [], "captum": []}
        for rep in range(a.reps):
            log(f"IG, {len(text.split())} words, repetition {rep + 1}/{a.reps}")
            body, dt, load = timed(lambda: glassbox(text), a.server_pid, a.max_other, a.retries,
                                   a.max_wait, log)
            e = body["explanations"][0]
            runs["glassbox"].append({"seconds": dt, "load": load, "usage": body["usage"],
                                     "delta": e["integrated_gradients"]["delta"]})
            log(f"  glassbox {dt:.3f} s")
            res, dt, load = timed(lambda: captum(text), a.server_pid, a.max_other, a.retries,
                                  a.max_wait, log)
            runs["captum"].append({"seconds": dt, "load": load, "delta": res["delta"]})
            log(f"  captum   {dt:.3f} s")
        g, c = median_s(runs["glassbox"], a.max_other), median_s(runs["captum"], a.max_other)
        record = {"record": "ig_compare", "text_words": len(text.split()),
                  "tokens": len(body["tokens"]), "steps": a.steps, "param_grads": param_grads,
                  "glassbox_median_s": round(g, 4), "captum_median_s": round(c, 4),
                  "ratio": round(g / c, 3),
                  "glassbox_all_s": [round(r["seconds"], 4) for r in runs["glassbox"]],
                  "captum_all_s": [round(r["seconds"], 4) for r in runs["captum"]],
                  "glassbox_delta": runs["glassbox"][0]["delta"],
                  "captum_delta": runs["captum"][0]["delta"],
                  "glassbox_usage": runs["glassbox"][0]["usage"],
                  "max_other_cpu_frac": max(r["load"]["other_cpu_frac"]
                                            for side in runs.values() for r in side),
                  "loadavg": [r["load"]["loadavg_before"] for side in runs.values() for r in side],
                  "text": text}
        emit(record)
        ig_rows.append(record)

    eval_rows = []
    if not a.skip_evaluate:
        for text in texts:
            cases = [
                ("gradients", "/explain/gradients",
                 {"text": text, "steps": a.steps, "granularity": "words"}),
                ("lime", "/explain/lime",
                 {"text": text, "num_samples": a.lime_samples, "num_features": "all", "seed": 0}),
            ]
            for route, path, body in cases:
                runs = {"plain": [], "evaluate": []}
                for rep in range(a.reps):
                    for kind, extra in (("plain", {}), ("evaluate", {"evaluate": True})):
                        out, dt, load = timed(lambda: post(a.url, path, {**body, **extra}),
                                              a.server_pid, a.max_other, a.retries, a.max_wait, log)
                        runs[kind].append({"seconds": dt, "load": load, "usage": out["usage"]})
                p, e = median_s(runs["plain"], a.max_other), median_s(runs["evaluate"], a.max_other)
                record = {"record": "evaluate_cost", "route": route, "text_words": len(text.split()),
                          "plain_median_s": round(p, 4), "evaluate_median_s": round(e, 4),
                          "extra_s": round(e - p, 4),
                          "plain_rows": runs["plain"][0]["usage"]["model_evaluations"],
                          "evaluate_rows": runs["evaluate"][0]["usage"]["model_evaluations"],
                          "max_other_cpu_frac": max(r["load"]["other_cpu_frac"]
                                                    for side in runs.values() for r in side),
                          "loadavg": [r["load"]["loadavg_before"]
                                      for side in runs.values() for r in side]}
                emit(record)
                eval_rows.append(record)

    load_now = os.getloadavg()
    print()
    print(f"Integrated gradients, {a.steps} Gauss-Legendre steps, median of {a.reps} alternating runs; "
          f"Captum param_grads={param_grads}, {a.threads} threads; glassbox release, row cache off; "
          f"load average at the end {load_now[0]:.2f} {load_now[1]:.2f} {load_now[2]:.2f}")
    print()
    print("| words | tokens | Captum s | glassbox s | glassbox / Captum | glassbox delta | Captum delta "
          "| max other CPU | load avg |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in ig_rows:
        print(f"| {r['text_words']} | {r['tokens']} | {r['captum_median_s']:.3f} | "
              f"{r['glassbox_median_s']:.3f} | {r['ratio']:.2f}x | {r['glassbox_delta']:.1e} | "
              f"{r['captum_delta']:.1e} | {r['max_other_cpu_frac']:.0%} | "
              f"{min(r['loadavg']):.1f}-{max(r['loadavg']):.1f} |")
    if eval_rows:
        print()
        print("Cost of evaluate = true (ERASER faithfulness), glassbox, median seconds")
        print()
        print("| route | words | without s | with s | extra s | rows without | rows with "
              "| max other CPU | load avg |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for r in eval_rows:
            print(f"| {r['route']} | {r['text_words']} | {r['plain_median_s']:.3f} | "
                  f"{r['evaluate_median_s']:.3f} | {r['extra_s']:+.3f} | {r['plain_rows']} | "
                  f"{r['evaluate_rows']} | {r['max_other_cpu_frac']:.0%} | "
                  f"{min(r['loadavg']):.1f}-{max(r['loadavg']):.1f} |")


if __name__ == "__main__":
    main()
