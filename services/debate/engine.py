"""The D&R debate with FAIR peer review, recorded as a Multi-Agent Interaction Graph.

One `run` is one question:
  round 0      every agent (student and teachers) answers the same prompt, ending in `Final answer: X`;
  peer review  FAIR: each teacher's round-0 rationale is scored 1-5 by every other teacher; accepted when the
               mean of the parsable scores is above `review_threshold`;
  gold         the client's / dataset's label; else the pseudo-gold: the answer that a majority (and at least
               `pseudo_gold_min_teachers`) of the answering teachers agree on, with at least that many of their
               rationales accepted. Neither: the MAG is stored with outcome `no_gold`, unusable for training;
  rounds 1..R-1  after round r, unless every answering agent is correct (the stopping rule): each correct
               agent critiques each wrong agent and each wrong agent reflects on its mistake given the gold;
               then every agent answers again seeing all last answers, reflections and feedback (shuffled per
               agent, each block cut to `block_tokens`). No critique phase after the last round.
The critiques addressed to the student are FAIR's fault-aware feedback (a correct teacher explaining the
student's mistake with the correct answer in hand); they are stored like every other critique.

An agent whose call failed is absent for that round; one that abstained gave no answer: neither counts in the
stopping rule, is critiqued, or reflects. Every phase is written to the store as it ends, so a debate cut
short keeps what it recorded.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from dataclasses import dataclass
from typing import Protocol

from services.config import DebateConfig
from services.debate import prompts
from services.debate.agents import Agent, Reply
from services.debate.budget import BlockBudget
from services.store.debates import utcnow
from services.store.mags import Edge, MagStore, Node
from services.tasks.answers import Kind, equivalent, kind_of, parse_final_answer

log = logging.getLogger(__name__)


class DebateObserver(Protocol):
    def on_reply(self, agent: Agent, kind: str, reply: Reply) -> None: ...
    def on_review(self, accepted: bool) -> None: ...
    def on_finish(self, result: DebateResult) -> None: ...


@dataclass
class DebateInput:
    question: str
    label: str | None = None
    label_source: str | None = None  # feedback | dataset
    capture_id: int | None = None
    source: str = "traffic"  # traffic | batch:<dataset>


@dataclass
class DebateResult:
    debate_id: int
    outcome: str  # solved | unsolved | no_gold | failed
    rounds: int
    stop_round: int | None
    gold: str | None
    gold_source: str
    usable: bool
    student_correct_first: bool | None
    student_correct_last: bool | None
    error: str | None = None


def guess_kind(question: str) -> Kind:
    """Answer kind before any answer exists (unlabelled traffic): options -> choice, numbers -> numeric."""
    if len(re.findall(r"^\s*\(?[A-J][).:]\s", question, flags=re.M)) >= 2:
        return "choice"
    return "numeric" if re.search(r"\d", question) else "text"


class DebateEngine:
    def __init__(
        self,
        student: Agent,
        teachers: list[Agent],
        cfg: DebateConfig,
        store: MagStore,
        *,
        budget: BlockBudget | None = None,
        observer: DebateObserver | None = None,
    ) -> None:
        if len(teachers) < 2:
            raise ValueError("a debate needs at least two teachers (peer review scores each by the others)")
        self.student, self.teachers, self.cfg, self.store = student, teachers, cfg, store
        self.budget = budget or BlockBudget()
        self.observer = observer

    @property
    def agents(self) -> list[Agent]:
        return [self.student, *self.teachers]

    async def run(self, inp: DebateInput) -> DebateResult:
        kind = kind_of(inp.label) if inp.label else guess_kind(inp.question)
        did = self.store.start_debate(
            capture_id=inp.capture_id, source=inp.source, question=inp.question, answer_kind=kind, gold=inp.label,
            gold_source=inp.label_source if inp.label else "none", prompt_version=prompts.PROMPT_VERSION,
            agents=[{"name": a.name, "role": a.role, "model": a.model} for a in self.agents], status="running",
        )
        if inp.capture_id is not None:
            self.store.attach_debate(inp.capture_id, did)
        result = await _Debate(self, did, inp.question, kind, inp.label, inp.label_source).run()
        if self.observer is not None:
            self.observer.on_finish(result)
        return result


class _Debate:
    """The state of one running debate."""

    def __init__(self, eng: DebateEngine, did: int, question: str, kind: Kind, gold: str | None,
                 gold_source: str | None) -> None:
        self.eng, self.cfg, self.store = eng, eng.cfg, eng.store
        self.did, self.question, self.kind = did, question, kind
        self.gold, self.gold_source = gold, gold_source if gold else "none"
        self.nodes: list[Node] = []

    # ---- one call, one phase --------------------------------------------------------------------------
    async def _turn(self, agent: Agent, prompt: str, kind: str, round_: int, target: str | None) -> Node:
        reply = await agent.ask(prompt, kind)
        if self.eng.observer is not None:
            self.eng.observer.on_reply(agent, kind, reply)
        node = Node(round=round_, agent=agent.name, role=agent.role, kind=kind, text=reply.text, status="ok",
                    target_agent=target, model=reply.model or agent.model, prompt=prompt,
                    prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                    latency_s=round(reply.latency_s, 4), cost_usd=reply.cost_usd, error=reply.error)
        if reply.error is not None or reply.text is None:
            node.status = "error"
        elif kind == "answer":
            parsed = parse_final_answer(reply.text)
            node.answer, node.status = parsed.answer, parsed.status
        elif kind == "review":
            node.score = prompts.parse_score(reply.text)
            node.status = "ok" if node.score is not None else "unparsed"  # FAIR drops unparsable scores
        elif kind == "critique":
            node.text = prompts.strip_prefix(reply.text, "Feedback:")
        elif kind == "reflection":
            node.text = prompts.strip_prefix(reply.text, "Self-reflection:")
        return node

    async def _phase(self, calls: list[tuple[Agent, str, str, int, str | None]]) -> list[Node]:
        nodes = list(await asyncio.gather(*(self._turn(*c) for c in calls)))
        self.store.add_nodes(self.did, nodes)
        self.nodes += nodes
        return nodes

    def _grade(self, answers: list[Node]) -> None:
        for n in answers:
            n.correct = equivalent(n.answer, self.gold, kind_of(self.gold or "")) if n.answered else None
        self.store.update_nodes(answers, "correct")

    # ---- the protocol ------------------------------------------------------------------------------------
    async def run(self) -> DebateResult:
        eng, cfg = self.eng, self.cfg
        first = await self._phase([(a, prompts.answer_prompt(self.question, self.kind), "answer", 0, None)
                                   for a in eng.agents])
        if first[0].status == "error":  # without the student's answer there is nothing to distill
            return self._finish("failed", [first], None, error=f"student: {first[0].error}")
        await self._peer_review(first)
        if self.gold is None:
            self.gold = self._pseudo_gold(first)
            if self.gold is None:
                return self._finish("no_gold", [first], None)
            self.gold_source = "pseudo"
            self.store.update_debate(self.did, gold=self.gold, gold_source="pseudo")
        self._grade(first)
        rounds, stop = [first], None
        for r in range(cfg.max_rounds):
            present = [n for n in rounds[r] if n.answered]
            if present and all(n.correct for n in present):
                stop = r
                break
            if r == cfg.max_rounds - 1:
                break
            feedback = await self._critique_phase(r, present) if cfg.reflection else {}
            nxt = await self._debate_round(r + 1, rounds[r], feedback)
            self._grade(nxt)
            rounds.append(nxt)
        return self._finish("solved" if stop is not None else "unsolved", rounds, stop)

    async def _peer_review(self, first: list[Node]) -> None:
        """FAIR: every teacher rationale of round 0 scored by the other teachers."""
        authors = [n for n in first if n.role == "teacher" and n.status == "ok"]
        calls = [(t, prompts.review_prompt(self.question, n.text or "", self.gold), "review", 0, n.agent)
                 for n in authors for t in self.eng.teachers if t.name != n.agent]
        reviews = await self._phase(calls)
        edges = []
        by_agent = {n.agent: n for n in authors}
        for rv in reviews:
            edges.append(Edge(rv.id, by_agent[rv.target_agent].id, "reviews"))  # type: ignore[arg-type,index]
        for n in authors:
            scores = [rv.score for rv in reviews if rv.target_agent == n.agent and rv.score is not None]
            n.review_mean = sum(scores) / len(scores) if scores else None
            n.accepted = n.review_mean is not None and n.review_mean > self.cfg.review_threshold
            if self.eng.observer is not None:
                self.eng.observer.on_review(n.accepted)
        self.store.add_edges(self.did, edges)
        self.store.update_nodes(authors, "review_mean", "accepted")

    def _pseudo_gold(self, first: list[Node]) -> str | None:
        answered = [n for n in first if n.role == "teacher" and n.status == "ok"]
        groups: list[list[Node]] = []
        for n in answered:
            for g in groups:
                if equivalent(n.answer, g[0].answer):
                    g.append(n)
                    break
            else:
                groups.append([n])
        if not groups:
            return None
        groups.sort(key=len, reverse=True)
        best = groups[0]
        if len(groups) > 1 and len(groups[1]) == len(best):
            return None  # a tie is no agreement
        need = self.cfg.pseudo_gold_min_teachers
        if len(best) < need or 2 * len(best) <= len(answered) or sum(bool(n.accepted) for n in best) < need:
            return None
        return best[0].answer

    async def _critique_phase(self, r: int, present: list[Node]) -> dict[str, list[Node]]:
        """Correct agents critique wrong ones; wrong ones reflect given the gold. Returns nodes by agent."""
        by_name = {a.name: a for a in self.eng.agents}
        right = [n for n in present if n.correct]
        wrong = [n for n in present if not n.correct]
        gold = self.gold or ""
        calls = [(by_name[c.agent], prompts.critique_prompt(self.question, c.text or "", w.text or "", gold),
                  "critique", r, w.agent) for c in right for w in wrong]
        calls += [(by_name[w.agent], prompts.reflection_prompt(self.question, w.text or "", gold),
                   "reflection", r, None) for w in wrong]
        made = await self._phase(calls)
        answer_of = {n.agent: n for n in present}
        edges = [Edge(m.id, answer_of[m.target_agent or m.agent].id,  # type: ignore[arg-type]
                      "critiques" if m.kind == "critique" else "reflects_on") for m in made]
        self.store.add_edges(self.did, edges)
        out: dict[str, list[Node]] = {}
        for m in made:
            if m.status == "ok":
                out.setdefault(m.target_agent or m.agent, []).append(m)
        return out

    def _block(self, answer: Node, extra: list[Node]) -> str:
        """One agent's block, within `block_tokens`: reflection and feedback get a share, reasoning the rest."""
        b, budget = self.eng.budget, self.cfg.block_tokens
        reflection = next((e.text for e in extra if e.kind == "reflection"), None)
        feedback = [e.text or "" for e in extra if e.kind == "critique"]
        share = budget // 4 // max(1, len(feedback))
        reflection = b.fit(reflection, budget // 4) if reflection else None
        feedback = [b.fit(f, share) for f in feedback]
        block = prompts.Block("", answer.answer or "(no answer)", reflection, tuple(feedback))
        rest = b.count(prompts.render_block(0, block))
        block.reasoning = b.fit(prompts.reasoning_of(answer.text or ""), max(32, budget - rest))
        return prompts.render_block(0, block)

    async def _debate_round(self, r: int, last: list[Node], feedback: dict[str, list[Node]]) -> list[Node]:
        shown = [n for n in last if n.status != "error"]
        blocks = {n.agent: self._block(n, feedback.get(n.agent, [])) for n in shown}
        calls = []
        for agent in self.eng.agents:
            order = list(blocks)
            random.Random(f"{self.did}-{r}-{agent.name}").shuffle(order)
            rendered = [blocks[name].replace('index="0"', f'index="{i}"', 1) for i, name in enumerate(order, 1)]
            calls.append((agent, prompts.debate_prompt(self.question, self.kind, rendered), "answer", r, None))
        nodes = await self._phase(calls)
        seen = [*shown, *(m for ms in feedback.values() for m in ms)]
        self.store.add_edges(self.did, [Edge(s.id, n.id, "saw") for n in nodes for s in seen])  # type: ignore[arg-type]
        return nodes

    # ---- the end -------------------------------------------------------------------------------------------
    def _finish(self, outcome: str, rounds: list[list[Node]], stop: int | None, error: str | None = None
                ) -> DebateResult:
        student = [n for rnd in rounds for n in rnd if n.role == "student" and n.answered]
        usable = self.gold is not None and any(n.correct for rnd in rounds for n in rnd)
        teacher_tokens = sum(n.prompt_tokens + n.completion_tokens for n in self.nodes if n.role == "teacher")
        student_tokens = sum(n.prompt_tokens + n.completion_tokens for n in self.nodes if n.role == "student")
        reviewed = [n for n in rounds[0] if n.role == "teacher" and n.accepted is not None]
        result = DebateResult(
            self.did, outcome, len(rounds), stop, self.gold, self.gold_source, usable,
            student[0].correct if student and student[0].round == 0 else None,
            student[-1].correct if student else None, error,
        )
        self.store.update_debate(
            self.did, status="done" if outcome != "failed" else "failed", outcome=outcome, rounds=len(rounds),
            stop_round=stop, usable=usable, gold=self.gold, gold_source=self.gold_source,
            student_correct_first=result.student_correct_first, student_correct_last=result.student_correct_last,
            teacher_tokens=teacher_tokens, student_tokens=student_tokens,
            cost_usd=round(sum(n.cost_usd for n in self.nodes), 6),
            accepted_rationales=sum(bool(n.accepted) for n in reviewed), reviewed_rationales=len(reviewed),
            finished_at=utcnow(), note=error,
        )
        return result
