"""The experiment's report files from a results dict (the numbers themselves come from `distillery experiment`)."""

from __future__ import annotations

import json

from ray_jobs.experiment.report import table, write_report


def variant(label: str, acc: float, tokens: float) -> dict:
    return {"label": label, "accuracy": acc, "correct": int(acc * 50), "n": 50, "mean_total_tokens": tokens,
            "mean_completion_tokens": tokens - 40}


def test_report_writes_json_markdown_and_png(tmp_path) -> None:
    results = {"plan": {"train_questions": 8, "eval_questions": 50}, "seconds": 600,
               "variants": {"none": variant("No distillation (base student)", 0.10, 140.0),
                            "dr_sft_tdpo": variant("D&R SFT + T-DPO", 0.36, 90.5)}}
    write_report(results, tmp_path)
    assert json.loads((tmp_path / "results.json").read_text())["variants"]["dr_sft_tdpo"]["accuracy"] == 0.36
    md = (tmp_path / "results.md").read_text()
    assert "| D&R SFT + T-DPO | 36.0% (18/50) | +26.0 pts | 90.5 | 50.5 | 50 |" in md
    assert table(results) in md
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
