"""The perturbation family end to end (issue 7, "Measure"): Kernel SHAP side by side with
Python shap, and the cost of occlusion and the counterfactual flip search at their defaults.

Run by scripts/bench-perturb.sh with the baseline venv's python (torch, transformers, shap);
the glassbox server must already be running (release build, row cache off).

For each of bench/python/bench_lime.py's three sentences (10, 25, 60 words):

* **SHAP, at the same number of model evaluations.** The Python side is
  bench/python/bench_shap.py's measurement with ``batch_size=64`` (the faster of the two
  settings the issue quotes): ``shap.Explainer(clf.predict_proba, shap.maskers.Text(tok))``
  picks the Partition explainer, ``max_evals=500``, both outputs explained. Its model rows are
  counted first (one untimed run); glassbox's ``POST /explain/shap`` then gets
  ``max_evals`` = that count, ``top_labels: 2``, ``mask: mask_token`` (shap's Text masker
  replaces with ``[MASK]`` too), so both evaluate the same number of texts. The two run
  alternately, ``--reps`` times each.
* **glassbox's own defaults**: ``/explain/shap`` (max_evals 2048), ``/explain/occlusion``
  (leave one word out) and ``/explain/counterfactual`` with ``flip_search: {}``: seconds and
  model evaluations (glassbox only: Python has no counterpart of these routes).

Each run records the CPU that other processes used meanwhile (see bench_lime_compare.py); a
run above ``--max-other`` is repeated after waiting, and the table shows what remained.

Output: JSON lines (``--out``), then two Markdown tables on stdout.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "bench", "python"))

import benchutil as bu  # noqa: E402
from bench_lime_compare import emitter, post, settled, timed  # noqa: E402


def top3_shap(body: dict, label: int = 1) -> list:
    """The three largest |values| of a label as [word, value], from a /explain/shap body."""
    features = body["features"]
    for entry in body["labels"]:
        if entry["label"] == label or entry.get("index") == label:
            values = entry["values"]
            break
    else:
        values = body["labels"][0]["values"]
    ranked = sorted(values, key=lambda v: -abs(v["value"]))[:3]
    return [[features[v["feature"]]["text"], round(v["value"], 5)] for v in ranked]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model_dir", nargs="?")
    ap.add_argument("--url", help="glassbox base URL (required)")
    ap.add_argument("--server-pid", type=int, help="excluded from 'other' CPU use (required)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-evals", type=int, default=500, help="Python shap's max_evals")
    ap.add_argument("--batch-size", type=int, default=64, help="Python shap's batch_size")
    ap.add_argument("--text", nargs="+", default=None, help="default: bench_lime.py's 3 texts")
    ap.add_argument("--max-other", type=float, default=0.10)
    ap.add_argument("--retries", type=int, default=2)
    ap.add_argument("--max-wait", type=float, default=60.0)
    ap.add_argument("--out")
    a = ap.parse_args()
    if not (a.model_dir and a.url and a.server_pid):
        ap.error("model_dir, --url and --server-pid are required")

    emit = emitter(a.out)
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731

    import shap
    from bench_lime import TEXTS

    from classifier import LABELS, ZeroShotSentiment, load_model

    texts = a.text or TEXTS
    thr = bu.setup_threads(a.threads)
    tok, model = load_model(a.model_dir)
    clf = ZeroShotSentiment(tok, model)
    info = json.loads(urllib.request.urlopen(a.url + "/info", timeout=30).read())
    emit(bu.environment_info({"script": "bench_perturb_compare.py", **thr, "glassbox_info": info,
                              "shap_version": shap.__version__}))

    def python_shap(text):
        explainer = shap.Explainer(clf.predict_proba, shap.maskers.Text(tok), output_names=list(LABELS))
        clf.reset_stats()
        sv = explainer([text], max_evals=a.max_evals, batch_size=a.batch_size, silent=True)
        return type(explainer).__name__, sv, dict(clf.stats)

    # Untimed warm-up of both sides (shap's first call pays imports and numba compilation).
    python_shap(texts[0])
    post(a.url, "/explain/shap", {"text": texts[0], "max_evals": 64, "seed": 0})

    shap_rows, default_rows = [], []
    for text in texts:
        words = len(text.split())
        algorithm, sv, stats = python_shap(text)
        evals = stats["rows"]
        log(f"{words} words: Python shap ({algorithm}) evaluates {evals} texts at max_evals={a.max_evals}")
        body = {"text": text, "top_labels": 2, "max_evals": evals, "mask": "mask_token"}
        runs = {"glassbox": [], "python": []}
        for rep in range(a.reps):
            out, dt, load = timed(lambda: post(a.url, "/explain/shap", {**body, "seed": rep}),
                                  a.server_pid, a.max_other, a.retries, a.max_wait, log)
            runs["glassbox"].append({"seconds": dt, "load": load, "usage": out["usage"],
                                     "exact": out["exact"], "coalitions": out["coalitions"],
                                     "top": top3_shap(out)})
            log(f"  glassbox {dt:.3f} s ({out['usage']['model_evaluations']} model rows)")
            (_, sv, st), dt, load = timed(lambda: python_shap(text), a.server_pid, a.max_other,
                                          a.retries, a.max_wait, log)
            pos = sv.values[0][:, 1]
            order = abs(pos).argsort()[::-1][:3]
            runs["python"].append({"seconds": dt, "load": load, "rows": st["rows"],
                                   "model_s": st["model_s"],
                                   "top": [[str(sv.data[0][i]), round(float(pos[i]), 5)] for i in order]})
            log(f"  python   {dt:.3f} s ({st['rows']} model rows)")
        g, p = settled(runs["glassbox"], a.max_other), settled(runs["python"], a.max_other)
        g_med = statistics.median(r["seconds"] for r in g)
        p_med = statistics.median(r["seconds"] for r in p)
        gmid = sorted(g, key=lambda r: r["seconds"])[len(g) // 2]
        pmid = sorted(p, key=lambda r: r["seconds"])[len(p) // 2]
        record = {"record": "shap_compare", "text_words": words, "python_algorithm": algorithm,
                  "python_max_evals": a.max_evals, "python_batch_size": a.batch_size,
                  "python_rows": pmid["rows"], "python_model_s": round(pmid["model_s"], 4),
                  "python_median_s": round(p_med, 4),
                  "python_all_s": [round(r["seconds"], 4) for r in runs["python"]],
                  "glassbox_max_evals": evals, "glassbox_exact": gmid["exact"],
                  "glassbox_coalitions": gmid["coalitions"],
                  "glassbox_model_rows": gmid["usage"]["model_evaluations"],
                  "glassbox_inference_ms": gmid["usage"]["inference_ms"],
                  "glassbox_median_s": round(g_med, 4),
                  "glassbox_all_s": [round(r["seconds"], 4) for r in runs["glassbox"]],
                  "speedup": round(p_med / g_med, 2),
                  "python_top3": pmid["top"], "glassbox_top3": gmid["top"],
                  "max_other_cpu_frac": max(r["load"]["other_cpu_frac"] for r in g + p),
                  "loadavg": [r["load"]["loadavg_before"] for r in g + p], "text": text}
        emit(record)
        shap_rows.append(record)

        for route, request in (("/explain/shap", {"text": text, "seed": 0}),
                               ("/explain/occlusion", {"text": text}),
                               ("/explain/counterfactual", {"text": text, "flip_search": {}})):
            runs = []
            for _ in range(a.reps):
                out, dt, load = timed(lambda: post(a.url, route, request), a.server_pid,
                                      a.max_other, a.retries, a.max_wait, log)
                runs.append({"seconds": dt, "load": load, "usage": out["usage"], "body": out})
            s = settled(runs, a.max_other)
            mid = sorted(s, key=lambda r: r["seconds"])[len(s) // 2]
            extra = {}
            if route == "/explain/shap":
                extra = {"exact": mid["body"]["exact"], "coalitions": mid["body"]["coalitions"]}
            elif route == "/explain/counterfactual":
                flip = mid["body"].get("flip_search") or {}
                extra = {"flip_found": flip.get("found"), "flip_strategy": flip.get("strategy")}
            record = {"record": "perturb_default", "route": route, "text_words": words,
                      "features": len(mid["body"]["features"]),
                      "median_s": round(statistics.median(r["seconds"] for r in s), 4),
                      "model_rows": mid["usage"]["model_evaluations"],
                      "tokens_evaluated": mid["usage"]["tokens_evaluated"],
                      "inference_ms": mid["usage"]["inference_ms"], **extra,
                      "max_other_cpu_frac": max(r["load"]["other_cpu_frac"] for r in s)}
            emit(record)
            default_rows.append(record)
            log(f"  {route}: {record['median_s']:.3f} s, {record['model_rows']} rows")

    print()
    print(f"Kernel SHAP against Python shap (Partition explainer, max_evals={a.max_evals}, "
          f"batch_size={a.batch_size}, {a.threads} threads) at the same number of model "
          f"evaluations; medians of {a.reps} alternating runs, row cache off; load average at the "
          f"end {os.getloadavg()[0]:.2f}")
    print()
    print("| words | model evaluations (Python / glassbox) | Python s | glassbox s | speedup "
          "| max other CPU |")
    print("|---:|---:|---:|---:|---:|---:|")
    for r in shap_rows:
        print(f"| {r['text_words']} | {r['python_rows']} / {r['glassbox_model_rows']} "
              f"| {r['python_median_s']:.2f} | {r['glassbox_median_s']:.3f} | {r['speedup']:.1f}x "
              f"| {r['max_other_cpu_frac']:.0%} |")
    print()
    print("glassbox at its defaults (SHAP max_evals 2048; occlusion leave-one-out; counterfactual "
          "flip_search {})")
    print()
    print("| route | words | features | model evaluations | seconds | note |")
    print("|---|---:|---:|---:|---:|---|")
    for r in default_rows:
        note = ""
        if "exact" in r:
            note = "exact" if r["exact"] else f"sampled, {r['coalitions']} coalitions"
        elif "flip_found" in r:
            note = f"{r['flip_strategy']}, {'found' if r['flip_found'] else 'none within the cap'}"
        print(f"| `{r['route']}` | {r['text_words']} | {r['features']} | {r['model_rows']} "
              f"| {r['median_s']:.3f} | {note} |")


if __name__ == "__main__":
    main()
