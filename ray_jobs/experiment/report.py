"""The experiment's outputs: results.json (everything), results.md (the table), results.png (the chart)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def table(results: dict[str, Any]) -> str:
    rows = results["variants"]
    base = rows.get("none", {}).get("accuracy")
    lines = ["| Variant | Accuracy (EM) | vs. none | Tokens / query | Completion tokens / query | n |",
             "|---|---|---|---|---|---|"]
    for r in rows.values():
        delta = f"{(r['accuracy'] - base) * 100:+.1f} pts" if base is not None else "-"
        lines.append(f"| {r['label']} | {r['accuracy']:.1%} ({r['correct']}/{r['n']}) | {delta} | "
                     f"{r['mean_total_tokens']:.1f} | {r['mean_completion_tokens']:.1f} | {r['n']} |")
    return "\n".join(lines)


def write_report(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=str))
    plan = results["plan"]
    md = [f"# Distillery ablation ({plan['train_questions']} train debates, {plan['eval_questions']} held-out "
          f"questions, {results.get('seconds', 0) / 60:.0f} min)", "", table(results), ""]
    (out_dir / "results.md").write_text("\n".join(md))
    chart(results, out_dir / "results.png")


def chart(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    rows = list(results["variants"].values())
    labels = [r["label"].replace(" (base student)", "").replace(" & ", " &\n") for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(12, 4.5))
    a.bar(labels, [100 * r["accuracy"] for r in rows], color="#4c72b0")
    a.set_ylabel("exact match on held-out split (%)")
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
