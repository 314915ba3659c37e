"""The experiment's report files from a results dict (the numbers themselves come from `distillery experiment`)."""

from __future__ import annotations

import json

import pytest

from ray_jobs.experiment.report import n_to_separate, table, wilson_interval, write_report, write_traffic_report


def variant(label: str, acc: float, tokens: float) -> dict:
    return {"label": label, "accuracy": acc, "correct": int(acc * 50), "n": 50, "mean_total_tokens": tokens,
            "mean_completion_tokens": tokens - 40}


def test_report_writes_json_markdown_and_png(tmp_path) -> None:
    results = {"plan": {"train_questions": 8, "eval_questions": 50}, "seconds": 600,
               "variants": {"none": variant("No distillation (base student)", 0.10, 140.0),
                            "dr_sft_tdpo": variant("D&R SFT + T-DPO", 0.36, 90.5)},
               "training": {"dr_sft_tdpo": {"data": {"round_0_nodes": 9, "round_0_nodes_kept": 9, "round_0_pairs": 20,
                                                     "round_1_nodes": 7, "round_1_nodes_kept": 7,
                                                     "round_1_nodes_split": 5, "round_1_split_prompts": 12,
                                                     "round_1_pairs_kept": 11, "sft_rationale": 30}}}}
    write_report(results, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["variants"]["dr_sft_tdpo"]["accuracy"] == 0.36
    assert saved["variants"]["dr_sft_tdpo"]["ci95"] == list(wilson_interval(18, 50))
    assert saved["training"]["dr_sft_tdpo"]["tree_rounds"]["1"] == {
        "nodes": 7, "nodes_kept": 7, "nodes_split": 5, "split_prompts": 12, "pairs_kept": 11}
    md = (tmp_path / "results.md").read_text()
    assert "| D&R SFT + T-DPO | 36.0% (18/50) | 24.1%-49.9% | +26.0 pts | 90.5 | 50.5 | 50 |" in md
    assert "| dr_sft_tdpo | 1 | 7 | 7 | 5 (12) | 0 | 11 |" in md
    assert table(results) in md
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confidence_intervals_and_the_eval_size_they_imply() -> None:
    lo, hi = wilson_interval(28, 80)
    assert (round(lo, 3), round(hi, 3)) == (0.255, 0.459)  # 35% of 80: about +-10 points
    assert wilson_interval(0, 10)[0] == 0.0 and 0.27 < wilson_interval(0, 10)[1] < 0.31
    # Intervals of half-width 1.5 points at 35% need about 3,900 questions per variant.
    n = n_to_separate(0.03)
    assert 3800 < n < 4000
    lo, hi = wilson_interval(round(0.35 * n), n)
    assert hi - lo == pytest.approx(0.03, abs=0.001)


def test_traffic_report_has_base_vs_promoted_and_every_cycle(tmp_path) -> None:
    results = {"plan": {"task": "banking77"}, "seconds": 3600, "captured": 320,
               "variants": {"none": variant("Base model", 0.0, 700.0), "promoted": variant("Promoted student", 0.5,
                                                                                             660.0)},
               "cycles": [{"sent": {"requests": 160, "labelled": 81},
                           "job": {"id": 1, "outcome": "promoted", "reason": "accuracy gain +0.400 | more",
                                   "data": {"mags": 110, "sft_examples": 220, "tree_pairs": 300}}},
                          {"sent": {"requests": 160, "labelled": 77},
                           "job": {"id": 2, "outcome": "failed", "reason": "Traceback (most recent call last):\n  ...",
                                   "error": "RuntimeError: x", "data": {}}}]}
    write_traffic_report(results, tmp_path)
    md = (tmp_path / "results.md").read_text()
    assert md.startswith("# Distillery on banking77 traffic (320 captured requests, 2 cycles, 60 min)")
    assert "| Promoted student | 50.0% (25/50) |" in md and "+50.0 pts" in md
    assert "| 1 | 160 (81) | 1 | 110 | 220 | 300 | promoted | accuracy gain +0.400 / more |" in md
    assert "| 2 | 160 (77) | 2 | - | - | - | failed | RuntimeError: x |" in md
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["variants"]["promoted"]["ci95"] == list(wilson_interval(25, 50))
    assert (tmp_path / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
