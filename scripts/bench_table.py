"""Prints the side-by-side forward table (Markdown) from the JSON lines of scripts/bench.sh.

Per (batch, length) and implementation it takes the best median over repetitions, and reports
sequences/s, GFLOP/s, the fraction of the measured matmul peak, and glassbox / PyTorch; when
the run includes the other matmul precisions (glassbox-highest, glassbox-medium), their
sequences/s and ratios follow.
"""
import json
import sys
from collections import defaultdict


def main(path):
    best = defaultdict(dict)
    peak = None
    for line in open(path):
        line = line.strip()
        if not line.startswith("{"):
            continue
        r = json.loads(line)
        if r.get("record") == "peak":
            peak = r["gflops"]
        if r.get("record") != "forward":
            continue
        key = (r["batch"], r["seq_len"])
        impl = r.get("implementation", "pytorch")
        if impl not in best[key] or r["seqs_per_s"] > best[key][impl]["seqs_per_s"]:
            best[key][impl] = r
    print(f"matmul peak (torch.mm 2048, fp32, 2 threads): {peak:.1f} GFLOP/s\n" if peak else "")
    extra = [i for i in ("glassbox-highest", "glassbox-medium") if any(i in v for v in best.values())]
    head = "| batch | length | PyTorch seq/s | glassbox seq/s | ratio | glassbox GFLOP/s | of peak |"
    rule = "|---:|---:|---:|---:|---:|---:|---:|"
    for impl in extra:
        name = impl.split("-")[1]
        head += f" {name} seq/s | {name} ratio |"
        rule += "---:|---:|"
    print(head)
    print(rule)
    for (b, l) in sorted(best, key=lambda k: (k[1], k[0])):
        py = best[(b, l)].get("pytorch")
        gb = best[(b, l)].get("glassbox")
        if not (py and gb):
            continue
        line = (f"| {b} | {l} | {py['seqs_per_s']:.1f} | {gb['seqs_per_s']:.1f} | "
                f"{gb['seqs_per_s'] / py['seqs_per_s']:.2f}x | {gb['achieved_gflops']:.0f} | "
                f"{gb['efficiency_vs_peak']:.0%} |")
        for impl in extra:
            other = best[(b, l)].get(impl)
            line += (f" {other['seqs_per_s']:.1f} | {other['seqs_per_s'] / py['seqs_per_s']:.2f}x |"
                     if other else " - | - |")
        print(line)


if __name__ == "__main__":
    main(sys.argv[1])
