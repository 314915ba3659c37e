"""Trees and SFT data from real MAGs (real debate engine, reference agents over HTTP, SQLite)."""

from __future__ import annotations

from collections import Counter

import pytest

from ray_jobs.trees.build import build
from ray_jobs.trees.encode import Encoder
from services.store.mags import MagStore
from services.student.tokenizer import PromptTokenizer
from tests.ray_jobs.mags import debate_mags


@pytest.fixture(scope="module")
def mags(tmp_path_factory: pytest.TempPathFactory) -> list:
    from services.store.db import Database

    db = Database(f"sqlite:///{tmp_path_factory.mktemp('trees') / 'd.db'}")
    db.create_all()
    store = MagStore(db)
    ids = debate_mags(store, 12)
    return [m for i in ids if (m := store.get(i)) is not None]


def test_tree_nodes_follow_the_debate(mags: list) -> None:
    data = build(mags, seed=0)
    assert data.trees, "the erring student must leave nodes with both correct and incorrect outputs"
    by_id = {m.id: m for m in mags}
    for node in data.trees:
        mag = by_id[node.mag_id]
        answers = [n for n in mag.answers(node.round) if n.answered]
        right = {n.answer for n in answers if n.correct}
        wrong = {n.answer for n in answers if n.correct is False}
        assert {c.rsplit("Final answer: ", 1)[-1] for c in node.chosen} <= right
        assert all(r.rsplit("Final answer: ", 1)[-1] in wrong or "Final answer" not in r for r in node.rejected)
        assert len(node.pairs) == min(16, len(node.chosen) * len(node.rejected))
        if node.round == 0:
            assert node.prompt == mag.question  # the traffic format: the question alone
        else:  # the debate's structured information of the previous round
            assert mag.question in node.prompt and "<agent_answer" in node.prompt
    assert any(n.round > 0 for n in data.trees), "debates past round 0 must give deeper tree levels"


def test_sft_items_are_correct_teacher_answers_and_accepted_feedback(mags: list) -> None:
    data = build(mags, seed=0)
    kinds = Counter(i.kind for i in data.sft)
    assert kinds["rationale"] > 0 and kinds["fault"] > 0
    by_id = {m.id: m for m in mags}
    for item in data.sft:
        mag = by_id[item.mag_id]
        if item.kind == "rationale":
            assert item.prompt == mag.question
            assert item.completion.startswith("### Answer\n")
            assert item.completion.rsplit("Final answer: ", 1)[-1] == mag.gold
        else:
            assert mag.gold in item.prompt and "<student_answer>" in item.prompt
            accepted = {n.agent for n in mag.answers(0) if n.role == "teacher" and n.accepted}
            critics = {c.agent for c in mag.of_kind("critique", 0) if c.text and c.text.strip() == item.completion
                       and c.target_agent == "student-sim"}
            assert critics & accepted
            student = next(n for n in mag.answers(0) if n.role == "student")
            assert student.correct is False and (student.text or "").strip() in item.prompt
    assert kinds["fault"] <= sum(1 for m in mags if any(n.role == "student" and n.correct is False
                                                         for n in m.answers(0)))  # one per initial mistake


def test_build_is_deterministic_and_restrictable(mags: list) -> None:
    a, b = build(mags, seed=3), build(mags, seed=3)
    assert [(t.mag_id, t.round, t.pairs) for t in a.trees] == [(t.mag_id, t.round, t.pairs) for t in b.trees]
    assert [(i.prompt, i.completion) for i in a.sft] == [(i.prompt, i.completion) for i in b.sft]
    single = build(mags, sft_teachers={"ref-exact"}, sft_rounds={0}, with_fault_items=False)
    assert {i.kind for i in single.sft} == {"rationale"}
    assert len(single.sft) <= len(mags) < len(a.sft)


def test_encoding_matches_the_serving_chat_format(mags: list, model_dir: str) -> None:
    tok = PromptTokenizer(model_dir)
    enc = Encoder(tok, max_prompt_tokens=4096, max_completion_tokens=384)
    data = build(mags, seed=0, max_pairs_per_node=4)
    counts: Counter[str] = Counter()
    sft = enc.sft(data.sft, counts)
    first = data.sft[0]
    assert sft[0].prompt_ids == tok.chat([{"role": "user", "content": first.prompt}])
    assert sft[0].completion_ids[-1] == tok.tok.eos_token_id
    trees = enc.trees(data.trees, level_weight=2.0, counts=counts)
    assert len(trees) == len(data.trees)
    for t, node in zip(trees, data.trees, strict=True):
        assert len(t.children) == len(node.chosen) + len(node.rejected)
        assert all(w < len(node.chosen) <= r for w, r in t.pairs)
        assert t.weight == 2.0 ** node.round
    short = Encoder(tok, max_prompt_tokens=64, max_completion_tokens=384)
    short_counts: Counter[str] = Counter()
    kept = short.trees(data.trees, 1.0, short_counts)
    assert len(kept) < len(trees) and short_counts["trees_dropped_long_prompt"] == len(trees) - len(kept)
