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
        right = {n.answer for n in answers if n.correct and n.accepted}  # FAIR's filter on chosen children
        wrong = {n.answer for n in answers if n.correct is False}
        assert {c.rsplit("Final answer: ", 1)[-1] for c in node.chosen} <= right
        assert {r.rsplit("Final answer: ", 1)[-1] for r in node.rejected} <= wrong
        assert len(node.pairs) == min(16, len(node.chosen) * len(node.rejected))
        if node.round == 0:
            assert node.prompt == mag.question  # the traffic format: the question alone
        else:  # the debate's structured information of the previous round
            assert mag.question in node.prompt and "<agent_answer" in node.prompt
    assert any(n.round > 0 for n in data.trees), "debates past round 0 must give deeper tree levels"


def test_sft_items_are_accepted_rationales_and_accepted_explanations(mags: list) -> None:
    data = build(mags, seed=0)
    kinds = Counter(i.kind for i in data.sft)
    assert kinds["rationale"] > 0 and kinds["explanation"] > 0
    by_id = {m.id: m for m in mags}
    for item in data.sft:
        mag = by_id[item.mag_id]
        if item.kind == "rationale":
            assert item.prompt == mag.question
            assert item.completion.startswith("### Answer\n")
            assert item.completion.rsplit("Final answer: ", 1)[-1] == mag.gold
            sources = [n for n in mag.answers() if n.role == "teacher" and n.correct and n.text
                       and n.text.rsplit("Final answer: ", 1)[0].strip() in item.completion]
            assert any(n.accepted for n in sources)  # an identical text may also come from an unaccepted one
        else:  # FAIR: an explanation of the student's initial mistake that peer review accepted
            sources = [n for n in mag.of_kind("explanation") if (n.text or "").strip() == item.completion
                       and n.prompt == item.prompt]
            assert any(n.accepted and n.target_agent == "student-sim" for n in sources)
            assert f"<hint>The correct final answer is {mag.gold}.</hint>" in item.prompt
            student = next(n for n in mag.answers(0) if n.role == "student")
            assert student.correct is False and (student.text or "").strip() in item.prompt
    assert kinds["explanation"] <= sum(1 for m in mags if any(n.role == "student" and n.correct is False
                                                               for n in m.answers(0)))  # one per initial mistake


def test_nothing_peer_review_rejected_is_trained(mags: list) -> None:
    import copy

    rejected = copy.deepcopy(mags)
    for m in rejected:
        for n in m.nodes:
            n.accepted = False if n.accepted is not None else None
    data = build(rejected, seed=0)
    assert data.sft == [] and data.trees == []
    assert sum(v for k, v in data.counts.items() if k.endswith("correct_not_accepted")) > 0


def test_gold_weights_and_faires_mix_weight_the_data(mags: list) -> None:
    import copy

    data = build(mags, seed=0, explanation_share=0.5)
    n = Counter(i.kind for i in data.sft)
    total = {k: sum(i.weight for i in data.sft if i.kind == k) for k in n}
    assert total["explanation"] == pytest.approx(total["rationale"])  # 50/50 of the loss whatever the counts
    assert sum(i.weight for i in data.sft) == pytest.approx(len(data.sft))  # mean 1
    tilted = build(mags, seed=0, explanation_share=0.2)
    t = {k: sum(i.weight for i in tilted.sft if i.kind == k) for k in n}
    assert t["explanation"] / (t["explanation"] + t["rationale"]) == pytest.approx(0.2)
    # A consensus trains at its configured weight; a source weighted 0 is not trained at all.
    half = copy.deepcopy(mags)
    for m in half[: len(half) // 2]:
        m.gold_source = "consensus"
    mixed = build(half, seed=0, gold_weights={"dataset": 1.0, "consensus": 0.5})
    consensus_ids = {m.id for m in half[: len(half) // 2]}
    assert {t.weight for t in mixed.trees if t.mag_id in consensus_ids} == {0.5}
    assert {t.weight for t in mixed.trees if t.mag_id not in consensus_ids} == {1.0}
    none = build(half, seed=0, gold_weights={"dataset": 1.0, "consensus": 0.0})
    assert not consensus_ids & set(none.mag_ids) and none.counts["mags_skipped_weight_0"] == len(consensus_ids)


def test_build_is_deterministic_and_restrictable(mags: list) -> None:
    a, b = build(mags, seed=3), build(mags, seed=3)
    assert [(t.mag_id, t.round, t.pairs) for t in a.trees] == [(t.mag_id, t.round, t.pairs) for t in b.trees]
    assert [(i.prompt, i.completion) for i in a.sft] == [(i.prompt, i.completion) for i in b.sft]
    single = build(mags, sft_teachers={"ref-exact"}, sft_rounds={0}, with_explanations=False)
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
    assert counts["round_1_nodes_kept"] > 0 and not any(k.endswith(("_split", "_cut")) for k in counts)


def test_long_debate_prompts_are_split_not_dropped(mags: list, model_dir: str) -> None:
    """D&R's long context: a later-round prompt over the budget becomes several prompts within it, each with the
    question and some agent blocks; the node's weight is shared among them; a round-0 prompt is never split."""
    tok = PromptTokenizer(model_dir)
    data = build(mags, seed=0, max_pairs_per_node=4)
    deep = [n for n in data.trees if n.round > 0]
    longest = max(len(tok.chat([{"role": "user", "content": n.prompt}])) for n in deep)
    budget = longest * 2 // 3  # the longest debate prompts no longer fit whole
    enc = Encoder(tok, max_prompt_tokens=budget, max_completion_tokens=384)
    counts: Counter[str] = Counter()
    trees = enc.trees(data.trees, 1.0, counts)
    split = sum(v for k, v in counts.items() if k.endswith("_nodes_split"))
    assert split > 0 and all(len(t.prompt_ids) <= budget for t in trees)
    kept = sum(v for k, v in counts.items() if k.endswith("_nodes_kept"))
    cut = sum(v for k, v in counts.items() if k.endswith("_nodes_cut") and not k.startswith("round_0"))
    assert kept == len(data.trees) - counts["round_0_nodes_cut"] and cut == 0
    extra = sum(v for k, v in counts.items() if k.endswith("_split_prompts")) - split
    assert len(trees) == kept + extra  # a split node is one tree per part
    questions = {m.question for m in mags}
    debate_parts = [tok.tok.decode(t.prompt_ids) for t in trees if len(t.prompt_ids) > 0]
    debate_parts = [text for text in debate_parts if "<agent_answer" in text]
    assert len(debate_parts) > sum(counts[f"round_{r}_nodes_kept"] for r in (1, 2))  # more parts than nodes
    assert all(any(f"<question>\n{q}\n</question>" in text for q in questions) for text in debate_parts)
    assert sum(t.weight for t in trees) == pytest.approx(len(data.trees) - counts["round_0_nodes_cut"])


INTENT_SYSTEM = "You are a banking assistant. Reply with the intent label only, nothing else."


def task_mag(store: MagStore, rid: str, kind: str, gold: str, messages: list[dict] | None,
             answers: list[tuple[str, str, str, bool, bool | None]]):
    """A finished debate of a captured request (its messages as the client sent them, when given); `answers`:
    round-0 (agent, role, answer, correct, accepted)."""
    from services.capture.sink import question_of
    from services.store.debates import utcnow
    from services.store.mags import Node

    capture_id = None
    question = question_of(messages) if messages else "What is 2 + 3?"
    if messages is not None:
        store.enqueue([{"request_id": rid, "question": question, "messages": messages, "task": "t"}])
        [item] = [i for i in store.claim("w", 10, 60) if i.request_id == rid]
        capture_id = item.id
    did = store.start_debate(capture_id=capture_id, source="traffic", question=question, answer_kind=kind,
                             gold=gold, gold_source="feedback", prompt_version="test", agents=[], status="running",
                             task="t", held_out=False)
    store.add_nodes(did, [Node(0, agent, role, "answer", f"### Answer\nThinking about {answer}.\n"
                               f"Final answer: {answer}", "ok", answer=answer, correct=correct, accepted=accepted)
                          for agent, role, answer, correct, accepted in answers])
    store.update_debate(did, status="done", outcome="unsolved", rounds=1, usable=True, finished_at=utcnow())
    mag = store.get(did)
    assert mag is not None and mag.messages == messages
    return mag


INTENT_MESSAGES = [{"role": "system", "content": INTENT_SYSTEM},
                   {"role": "user", "content": "I ordered a card two weeks ago and it still has not come."}]


def intent_mag(store: MagStore, rid: str = "r-intent", accepted: bool = True):
    return task_mag(store, rid, "label", "card_arrival", INTENT_MESSAGES, [
        ("teacher-a", "teacher", "card_arrival", True, accepted),
        ("student", "student", "card_delivery_estimate", False, None),
    ])


def test_a_label_task_trains_the_apps_format_on_the_clients_messages(store: MagStore) -> None:
    mag = intent_mag(store)
    data = build([mag], seed=0)
    [app] = [i for i in data.sft if i.kind == "app"]
    assert (app.prompt, app.completion, app.messages) == (mag.question, "card_arrival", INTENT_MESSAGES)
    [node] = data.trees
    assert node.round == 0 and node.chosen == ["card_arrival"] and node.rejected == ["card_delivery_estimate"]
    assert node.pairs == [(0, 0)] and node.messages == INTENT_MESSAGES and node.prompt == mag.question
    [rationale] = [i for i in data.sft if i.kind == "rationale"]
    assert rationale.messages is None and rationale.prompt == mag.question  # reasoning: in the debate's format
    assert rationale.completion.startswith("### Answer\n")
    assert rationale.completion.endswith("Final answer: card_arrival")
    assert data.counts["sft_app"] == 1 and data.counts["sft_rationale"] == 1


def test_a_label_task_without_an_accepted_correct_answer_has_no_app_pairs(store: MagStore) -> None:
    data = build([intent_mag(store, accepted=False)], seed=0)
    assert data.trees == [] and data.counts["round_0_nodes_without_pairs"] == 1
    assert [i.kind for i in data.sft] == ["app"]  # the gold itself still trains the app's format


def test_a_label_debate_without_the_clients_messages_trains_as_before(store: MagStore) -> None:
    mag = task_mag(store, "batch", "label", "card_arrival", None, [
        ("teacher-a", "teacher", "card_arrival", True, True),
        ("student", "student", "card_delivery_estimate", False, None)])
    data = build([mag], seed=0)
    assert {i.kind for i in data.sft} == {"rationale"}
    [node] = data.trees
    assert node.messages is None and node.chosen[0].startswith("### Answer\n")
    assert node.rejected[0].endswith("Final answer: card_delivery_estimate")


def test_a_number_task_with_messages_asks_rationales_as_the_client_did(store: MagStore) -> None:
    messages = [{"role": "system", "content": "Solve it, then write `Final answer: X`."},
                {"role": "user", "content": "What is 2 + 3?"}]
    mag = task_mag(store, "r-math", "number", "5", messages, [
        ("teacher-a", "teacher", "5", True, True), ("student", "student", "6", False, None)])
    data = build([mag], seed=0)
    assert not [i for i in data.sft if i.kind == "app"]
    [rationale] = data.sft
    assert rationale.messages == messages and rationale.completion.endswith("Final answer: 5")
    [node] = data.trees
    assert node.messages == messages and node.chosen[0].startswith("### Answer\n")
    assert node.rejected[0].endswith("Final answer: 6")


def test_encoding_renders_the_clients_system_prompt(store: MagStore, model_dir: str) -> None:
    tok = PromptTokenizer(model_dir)
    enc = Encoder(tok, max_prompt_tokens=1024, max_completion_tokens=64)
    data = build([intent_mag(store)], seed=0)
    counts: Counter[str] = Counter()
    by_kind = {i.kind: ex for i, ex in zip(data.sft, enc.sft(data.sft, counts), strict=True)}
    assert by_kind["app"].prompt_ids == tok.chat(INTENT_MESSAGES)
    assert INTENT_SYSTEM in tok.tok.decode(by_kind["app"].prompt_ids)
    assert by_kind["app"].completion_ids == [*tok.tok("card_arrival", add_special_tokens=False).input_ids,
                                             tok.tok.eos_token_id]
    rationale_prompt = tok.tok.decode(by_kind["rationale"].prompt_ids)
    question = next(i.prompt for i in data.sft if i.kind == "rationale")
    assert by_kind["rationale"].prompt_ids == tok.chat([{"role": "user", "content": question}])
    assert INTENT_SYSTEM in rationale_prompt  # inside the debated question, as one user message
    [tree] = enc.trees(data.trees, 1.0, counts)
    assert tree.prompt_ids == tok.chat(INTENT_MESSAGES)
    assert tok.tok.decode(tree.children[0]).startswith("card_arrival")
    assert tok.tok.decode(tree.children[1]).startswith("card_delivery_estimate")


def test_a_task_without_reasoning_trains_its_app_format_only(store: MagStore) -> None:
    """`tasks[].train_reasoning: false`: the task's rationale and explanation items (the debate's prose) are left
    out, its app-format items and trees kept; other tasks keep theirs."""
    from services.store.mags import Node

    mag = intent_mag(store)
    store.add_nodes(mag.id, [Node(0, "teacher-a", "teacher", "explanation", "The message is about a card that has "
                                  "not arrived: card_arrival, not card_delivery_estimate.", "ok", accepted=True,
                                  prompt="Explain the student's mistake.", target_agent="student")])
    mag = store.get(mag.id)
    full = build([mag], seed=0)
    lean = build([mag], seed=0, without_reasoning=frozenset({"t"}))
    assert sorted(i.kind for i in full.sft) == ["app", "explanation", "rationale"]
    assert [(i.kind, i.completion) for i in lean.sft] == [("app", "card_arrival")]
    assert [(t.chosen, t.rejected) for t in lean.trees] == [(t.chosen, t.rejected) for t in full.trees]
    other = build([mag], seed=0, without_reasoning=frozenset({"some-other-task"}))
    assert sorted(i.kind for i in other.sft) == ["app", "explanation", "rationale"]


def test_summary_counts_what_was_built(store: MagStore) -> None:
    data = build([intent_mag(store)], seed=0)
    assert data.pairs == 1
    assert data.summary() == {"mags": 1, "trees": 1, "pairs": 1, "sft": 2, "mags_gold_feedback": 1,
                              "round_0_correct_not_accepted": 0, "round_0_nodes": 1, "round_0_pairs": 1,
                              "sft_app": 1, "sft_rationale": 1}
    assert list(data.summary())[4:] == sorted(data.counts)  # the counts follow the totals, sorted by name


@pytest.mark.parametrize(("served", "extra"), [
    ("I think this is about a card that has not arrived yet.", True),  # prose: the app reads no label from it
    ("card_linking", True),  # a wrong label
    ("card_arrival", False),  # the gold alone: the app read it right
    ('"card_arrival".', False),  # quotes and a period are what the app forgives
    ("   ", False),  # nothing served
])
def test_the_students_served_reply_is_rejected_when_the_app_would_not_read_the_gold(store: MagStore, served: str,
                                                                                    extra: bool) -> None:
    import dataclasses

    mag = dataclasses.replace(intent_mag(store), served_output=served)
    [node] = build([mag], seed=0).trees
    expected = ["card_delivery_estimate"] + ([served.strip()] if extra else [])
    assert node.chosen == ["card_arrival"] and node.rejected == expected
    assert node.pairs == [(0, j) for j in range(len(expected))]


def test_nodes_without_pairs_are_counted_per_node(store: MagStore) -> None:
    mags = [intent_mag(store, rid=f"r-{i}", accepted=False) for i in range(3)]
    data = build(mags, seed=0)
    assert data.trees == [] and data.counts["round_0_nodes_without_pairs"] == 3


def test_a_later_rounds_node_is_the_students_debate_prompt_without_the_clients_messages(store: MagStore) -> None:
    from services.store.mags import Node

    messages = [{"role": "system", "content": "Solve it, then write `Final answer: X`."},
                {"role": "user", "content": "What is 2 + 3?"}]
    mag = task_mag(store, "r-deep", "number", "5", messages, [
        ("teacher-a", "teacher", "5", True, True), ("student", "student", "6", False, None)])
    # Round 1: each agent saw the same blocks in its own order; the teacher's turn is stored first.
    store.add_nodes(mag.id, [
        Node(1, "teacher-a", "teacher", "answer", "### Answer\nStill 5.\nFinal answer: 5", "ok", answer="5",
             correct=True, accepted=True, prompt="<question>2 + 3</question> blocks in the teacher's order"),
        Node(1, "student", "student", "answer", "### Answer\nStill 6.\nFinal answer: 6", "ok", answer="6",
             correct=False, prompt="<question>2 + 3</question> blocks in the student's order")])
    store.update_debate(mag.id, rounds=2)
    data = build([store.get(mag.id)], seed=0)
    first, second = data.trees
    assert (first.round, first.messages) == (0, messages)
    assert second.round == 1 and second.messages is None  # the debate prompt is one user message
    assert second.prompt == "<question>2 + 3</question> blocks in the student's order"


def test_node_and_pair_counts_add_up_over_mags(store: MagStore) -> None:
    data = build([intent_mag(store, rid=f"r-{i}") for i in range(3)], seed=0)
    assert (data.counts["round_0_nodes"], data.counts["round_0_pairs"]) == (3, 3) == (len(data.trees), data.pairs)


def test_skipped_mags_are_counted_by_why_and_kept_mags_by_id(store: MagStore) -> None:
    import dataclasses

    mag = intent_mag(store)
    unusable = dataclasses.replace(intent_mag(store, rid="r-2"), usable=False)
    no_gold = dataclasses.replace(intent_mag(store, rid="r-3"), gold=None)
    data = build([mag, unusable, no_gold], seed=0, gold_weights={"feedback": 0.5})
    assert data.mag_ids == [mag.id]
    assert data.counts["mags_skipped_unusable"] == 2 and data.counts["mags_skipped_weight_0"] == 0


def test_rationales_keep_to_the_rounds_asked_and_a_task_without_a_name_is_the_default(store: MagStore) -> None:
    import dataclasses

    mag = intent_mag(store)
    assert [i.kind for i in build([mag], seed=0, sft_rounds={1}).sft] == ["app"]  # no round-1 answers
    assert sorted(i.kind for i in build([mag], seed=0, sft_rounds={0}).sft) == ["app", "rationale"]
    unnamed = dataclasses.replace(mag, task=None)
    assert [i.kind for i in build([unnamed], seed=0, without_reasoning=frozenset({"default"})).sft] == ["app"]


def test_a_graded_answer_is_trained_in_the_answer_format_whatever_its_agent_wrote() -> None:
    from ray_jobs.trees.build import answer_text
    from services.debate.prompts import reasoning_of
    from services.store.mags import Node

    text = "Two plus three.\n\n**Final Answer:** $5$"
    node = Node(0, "teacher-a", "teacher", "answer", text, "ok", answer="5", correct=True)
    assert answer_text(node) == f"### Answer\n{reasoning_of(text)}\nFinal answer: 5"
    assert answer_text(node) != text.strip()
    unparsed = Node(0, "student", "student", "answer", "  I could not finish.  ", "unparsed")
    assert answer_text(unparsed) == "I could not finish."  # no answer: the raw reply, never `Final answer: None`
