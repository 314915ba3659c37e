"""The experiment's outputs: results.json (everything), results.md (the table), results.png (the chart)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

Z95 = 1.959964  # two-sided 95% normal quantile


def wilson_interval(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (well-behaved at small n and near 0 or 1, unlike p +- z*se)."""
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def n_to_separate(delta: float, p: float = 0.35, z: float = Z95) -> int:
    """Questions per variant for a 95% interval of half-width `delta / 2` at accuracy `p`, so that two variants
    `delta` apart have non-overlapping intervals: the eval size that tells them apart."""
    return math.ceil(p * (1 - p) * (2 * z / delta) ** 2)


def tree_rounds(data: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Tree nodes and pairs per debate round from a training-data summary: built, kept, split, cut."""
    out: dict[str, dict[str, int]] = {}
    for key, value in data.items():
        m = re.fullmatch(r"round_(\d+)_(.+)", key)
        if m:
            out.setdefault(m.group(1), {})[m.group(2)] = value
    return dict(sorted(out.items(), key=lambda kv: int(kv[0])))


def table(results: dict[str, Any]) -> str:
    rows = results["variants"]
    base = rows.get("none", {}).get("accuracy")
    lines = ["| Variant | Accuracy (EM) | 95% CI | vs. none | Tokens / query | Completion tokens / query | n |",
             "|---|---|---|---|---|---|---|"]
    for r in rows.values():
        delta = f"{(r['accuracy'] - base) * 100:+.1f} pts" if base is not None else "-"
        lo, hi = wilson_interval(r["correct"], r["n"])
        lines.append(f"| {r['label']} | {r['accuracy']:.1%} ({r['correct']}/{r['n']}) | {lo:.1%}-{hi:.1%} | {delta} | "
                     f"{r['mean_total_tokens']:.1f} | {r['mean_completion_tokens']:.1f} | {r['n']} |")
    return "\n".join(lines)


def rounds_table(results: dict[str, Any]) -> str:
    lines = ["| Training job | Round | Nodes built | Nodes kept | Split (into prompts) | Cut | Pairs kept |",
             "|---|---|---|---|---|---|---|"]
    for name, job in results.get("training", {}).items():
        for r, c in tree_rounds(job.get("data", {})).items():
            lines.append(f"| {name} | {r} | {c.get('nodes', 0)} | {c.get('nodes_kept', 0)} | "
                         f"{c.get('nodes_split', 0)} ({c.get('split_prompts', 0)}) | {c.get('nodes_cut', 0)} | "
                         f"{c.get('pairs_kept', 0)} |")
    return "\n".join(lines)


def annotate(results: dict[str, Any]) -> None:
    """Confidence intervals and per-round tree counts, written into results.json next to the raw figures."""
    for r in results["variants"].values():
        r["ci95"] = list(wilson_interval(r["correct"], r["n"]))
    for job in results.get("training", {}).values():
        job["tree_rounds"] = tree_rounds(job.get("data", {}))
    results["eval_size_to_separate_3_points"] = n_to_separate(0.03)


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    annotate(results)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plan = results["plan"]
    md = [f"# Distillery ablation ({plan['train_questions']} train debates, {plan['eval_questions']} held-out "
          f"questions, {results.get('seconds', 0) / 60:.0f} min)", "", table(results), "",
          f"95% Wilson intervals. Telling two variants 3 points apart needs about "
          f"{results['eval_size_to_separate_3_points']} held-out questions per variant.", "",
          "## Preference-tree nodes per debate round", "", rounds_table(results), ""]
    (out_dir / "results.md").write_text("\n".join(md))
    chart(results, out_dir / "results.png")


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    rows = list(results["variants"].values())
    labels = [r["label"].replace(" (base student)", "").replace(" & ", " &\n") for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    cis = [wilson_interval(r["correct"], r["n"]) for r in rows]
    acc = [100 * r["accuracy"] for r in rows]
    a.bar(labels, acc, color="#4c72b0",
          yerr=[[v - 100 * lo for v, (lo, _) in zip(acc, cis, strict=True)],
                [100 * hi - v for v, (_, hi) in zip(acc, cis, strict=True)]], capsize=4)
    a.set_ylabel("exact match on held-out split (%), 95% CI")
    a.set_title("Accuracy")
    b.bar(labels, [r["mean_total_tokens"] for r in rows], color="#dd8452")
    b.set_ylabel("mean total tokens per query")
    b.set_title("Tokens per query")
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
        for lbl in ax.get_xticklabels():
            lbl.set_horizontalalignment("right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cycles_table(results: dict[str, Any]) -> str:
    """A traffic run's training cycles: what each sent, trained on, measured and decided."""
    lines = ["| Cycle | Requests (labelled) | Job | MAGs | SFT examples | Pairs | Outcome | Reason |",
             "|---|---|---|---|---|---|---|---|"]
    for i, c in enumerate(results["cycles"], 1):
        job, data = c["job"], c["job"].get("data") or {}
        why = job.get("error") if job.get("outcome") == "failed" else job.get("reason")  # not a failed traceback
        reason = " ".join((why or "").split()).replace("|", "/")[:300]
        lines.append(f"| {i} | {c['sent']['requests']} ({c['sent']['labelled']}) | {job['id']} | "
                     f"{data.get('mags', '-')} | {data.get('sft_examples', '-')} | {data.get('tree_pairs', '-')} | "
                     f"{job.get('outcome')} | {reason} |")
    return "\n".join(lines)


def write_traffic_report(results: dict[str, Any], out_dir: Path) -> None:
    """`distillery experiment --task`: base vs promoted on the task's held-out traffic, and the cycles."""
    for r in results["variants"].values():
        r["ci95"] = list(wilson_interval(r["correct"], r["n"]))
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plan = results["plan"]
    md = [f"# Distillery on {plan['task']} traffic ({results.get('captured', 0)} captured requests, "
          f"{len(results['cycles'])} cycles, {results.get('seconds', 0) / 60:.0f} min)", "",
          "Base model vs the promoted student on the task's held-out traffic slice (never trained on), through "
          "the gateway in the app's format, exact label.", "", table(results), "",
          "## Training cycles", "", cycles_table(results), "", *([results["note"], ""] if results.get("note") else [])]
    (out_dir / "results.md").write_text("\n".join(md))
    chart(results, out_dir / "results.png")
