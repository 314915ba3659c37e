"""The D&R debate with FAIR peer review, recorded as a Multi-Agent Interaction Graph.

One `run` is one question:
  round 0      every agent (student and teachers) answers the same prompt, ending in `Final answer: X`;
  peer review  FAIR: each teacher's round-0 rationale is scored 1-5 by every other teacher; accepted when the
               mean of the readable scores is above `review_threshold`;
  gold         the client's / dataset's label; else the teachers' consensus: the answer that at least
               `pseudo_gold_min_teachers` teachers with accepted rationales agree on, with no accepted rationale
               dissenting. Neither: the MAG is stored with outcome `no_gold`, unusable for training;
  FAIR         when the student's round-0 answer is wrong, every teacher explains its mistake (FAIR's fault-aware
               prompt, gold as a hint, `explanation_temperature`), and each explanation is peer-reviewed too;
  rounds 1..R-1  after round r, unless every answering agent is correct (the stopping rule): each correct
               agent critiques each wrong agent and each wrong agent reflects on its mistake given the gold;
               then every agent answers again seeing all last answers, reflections and feedback (shuffled per
               agent, each block cut to `block_tokens`, and further for an agent whose context is smaller);
  review       every correct answer of every round that is not reviewed yet is peer-reviewed by the teachers
               other than its author: training takes chosen answers and rationales only from accepted ones.
No critique phase after the last round. Prompts state the gold with its provenance (`prompts.gold_line`).

Tasks (`DebateInput.task`, docs/tasks.md): the task's answer spec reads every answer (a `label` task's prompts name
the label set, or point to the request's own list); only the task's teachers debate it; a client label that is not
a valid answer for the task is ignored (noted on the debate); a consensus is only a valid answer. A `text` task is
judged: every answer, the student's included, is scored against the task's rubric by the teachers other than its
author, correct when the mean reaches `judge_threshold`; the best-judged passing teacher answer is the reference.

Reading a reply (`services.tasks.answers`) has four outcomes: `ok` (graded), `unparsed`, `abstained`, `truncated`
(cut at max_tokens). Only `ok` is graded: the other three are never wrong, never critiqued, never a rejected
child, and do not block the stopping rule. An agent whose call failed is absent for that phase. Every phase is
written to the store as it ends, so a debate cut short keeps what it recorded.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Protocol

from services.config import DebateConfig, TaskProfile
from services.debate import prompts
from services.debate.agents import Agent, Reply
from services.debate.budget import BlockBudget
from services.store.debates import DebateOutcome, DebateStatus, NodeStatus, utcnow
from services.store.mags import Edge, MagStore, Node
from services.tasks.answers import AnswerSpec, answer_type_of, is_valid, read_answer, read_score, same_answer, spec_of

log = logging.getLogger(__name__)


class DebateObserver(Protocol):
    def on_reply(self, agent: Agent, kind: str, reply: Reply) -> None: ...
    def on_answer(self, agent: Agent, status: str) -> None: ...
    def on_review(self, accepted: bool) -> None: ...
    def on_finish(self, result: DebateResult) -> None: ...


@dataclass
class DebateInput:
    question: str
    label: str | None = None
    label_source: str | None = None  # feedback | dataset
    capture_id: int | None = None
    source: str = "traffic"  # traffic | batch:<dataset>
    task: TaskProfile | None = None  # None: answer type from the label (a dataset's), `text` without one
    held_out: bool = False  # in the task's evaluation slice (debated for its gold, never trained on)


@dataclass
class DebateResult:
    debate_id: int
    outcome: DebateOutcome
    rounds: int
    stop_round: int | None
    gold: str | None
    gold_source: str  # feedback | dataset | consensus | none
    usable: bool
    student_correct_first: bool | None
    student_correct_last: bool | None
    error: str | None = None


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

    def teachers_for(self, task: TaskProfile | None) -> list[Agent]:
        return [t for t in self.teachers if task is None or not task.teachers or t.name in task.teachers]

    async def run(self, inp: DebateInput) -> DebateResult:
        spec = inp.task.spec if inp.task else spec_of(answer_type_of(inp.label) if inp.label else "text")
        label, note = inp.label, None
        if label is not None and not is_valid(label, spec):  # e.g. a label outside the task's set
            label, note = None, f"the {inp.label_source or 'dataset'} label {inp.label[:80]!r} is not a valid answer " \
                                f"for task {inp.task.name if inp.task else '-'}: ignored"
        gold_source = (inp.label_source or "dataset") if label else "none"
        teachers = self.teachers_for(inp.task)
        did = self.store.start_debate(
            capture_id=inp.capture_id, source=inp.source, question=inp.question, answer_kind=spec.type,
            gold=label, gold_source=gold_source, prompt_version=prompts.PROMPT_VERSION, note=note,
            task=inp.task.name if inp.task else None, held_out=inp.held_out,
            agents=[{"name": a.name, "role": a.role, "model": a.model} for a in [self.student, *teachers]],
            status=DebateStatus.RUNNING,
        )
        if inp.capture_id is not None:
            self.store.attach_debate(inp.capture_id, did)
        result = await _Debate(self, did, inp, spec, label, gold_source, teachers).run()
        if self.observer is not None:
            self.observer.on_finish(result)
        return result


Call = tuple[Agent, str, str, int, str | None]  # agent, prompt, kind, round, target agent


class _Debate:
    """The state of one running debate."""

    def __init__(self, eng: DebateEngine, did: int, inp: DebateInput, spec: AnswerSpec, gold: str | None,
                 gold_source: str, teachers: list[Agent]) -> None:
        self.eng, self.cfg, self.store = eng, eng.cfg, eng.store
        self.did, self.question, self.spec = did, inp.question, spec
        self.judged = spec.type == "text" and inp.task is not None  # free form: the teachers judge correctness
        self.task = inp.task
        self.gold, self.gold_source = gold, gold_source
        self.teachers, self.agents = teachers, [eng.student, *teachers]
        self.nodes: list[Node] = []

    # ---- one call, one phase --------------------------------------------------------------------------
    async def _turn(self, agent: Agent, prompt: str, kind: str, round_: int, target: str | None) -> Node:
        reply = await agent.ask(prompt, kind)
        obs = self.eng.observer
        if obs is not None:
            obs.on_reply(agent, kind, reply)
        node = Node(round=round_, agent=agent.name, role=agent.role, kind=kind, text=reply.text, status=NodeStatus.OK,
                    target_agent=target, model=reply.model or agent.model, prompt=prompt,
                    prompt_tokens=reply.prompt_tokens, completion_tokens=reply.completion_tokens,
                    latency_s=round(reply.latency_s, 4), cost_usd=reply.cost_usd, error=reply.error)
        if reply.error is not None or reply.text is None:
            node.status = NodeStatus.ERROR
        elif kind == "answer":
            reading = read_answer(reply.text, self.spec, finish_reason=reply.finish_reason)
            node.answer, node.status = reading.answer, NodeStatus(reading.status)
            if obs is not None:
                obs.on_answer(agent, reading.status)
        elif kind == "review":
            node.score = read_score(reply.text)
            # FAIR drops unreadable scores
            node.status = NodeStatus.OK if node.score is not None else NodeStatus.UNPARSED
        elif reply.finish_reason == "length":  # a cut critique, reflection or explanation teaches half a thought
            node.status = NodeStatus.TRUNCATED
        elif kind == "critique":
            node.text = prompts.strip_prefix(reply.text, "Feedback:")
        elif kind == "reflection":
            node.text = prompts.strip_prefix(reply.text, "Self-reflection:")
        if node.status == NodeStatus.OK and kind != "answer" and not (node.text or "").strip():
            node.status = NodeStatus.UNPARSED
        return node

    async def _phase(self, calls: list[Call]) -> list[Node]:
        nodes = list(await asyncio.gather(*(self._turn(*c) for c in calls)))
        self.store.add_nodes(self.did, nodes)
        self.nodes += nodes
        return nodes

    def _grade(self, answers: list[Node]) -> None:
        for n in answers:
            n.correct = same_answer(n.answer, self.gold, self.spec) if n.answered else None
        self.store.update_nodes(answers, "correct")

    # ---- the protocol ------------------------------------------------------------------------------------
    async def run(self) -> DebateResult:
        cfg = self.cfg
        first = await self._phase([(a, prompts.answer_prompt(self.question, self.spec), "answer", 0, None)
                                   for a in self.agents])
        if first[0].status == NodeStatus.ERROR:  # without the student's answer there is nothing to distill
            return self._finish(DebateOutcome.FAILED, [first], None, error=f"student: {first[0].error}")
        if self.judged:  # free form: every answer judged by the teachers; the best judged one is the reference
            await self._review([n for n in first if n.answered])
        else:
            await self._review([n for n in first if n.role == "teacher" and n.answered])
        if self.gold is None:
            self.gold = self._judged_best(first) if self.judged else self._consensus(first)
            if self.gold is None:
                return self._finish(DebateOutcome.NO_GOLD, [first], None)
            self.gold_source = "consensus"
            self.store.update_debate(self.did, gold=self.gold, gold_source="consensus")
        if not self.judged:
            self._grade(first)
        await asyncio.gather(self._explain_student_mistake(first),
                             self._review([n for n in first if n.correct and n.accepted is None]))
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
            if self.judged:
                await self._review([n for n in nxt if n.answered])
            else:
                self._grade(nxt)
                await self._review([n for n in nxt if n.correct])
            rounds.append(nxt)
        outcome = DebateOutcome.SOLVED if stop is not None else DebateOutcome.UNSOLVED
        return self._finish(outcome, rounds, stop)

    async def _review(self, targets: list[Node]) -> None:
        """FAIR's peer review: each target (an answer or an explanation) scored 1-5 by every teacher other than
        its author; accepted when the mean readable score is above `review_threshold`. Reviewers see the gold as
        a hint once it exists (a label from the start; a consensus only after the round-0 reviews decided it)."""
        gold, source = self.gold, self.gold_source
        calls: list[Call] = []
        owners: list[Node] = []
        student = next((a for a in self.nodes if a.kind == "answer" and a.round == 0 and a.role == "student"), None)
        for n in targets:
            if n.kind == "explanation":
                prompt = prompts.explanation_review_prompt(self.question, student.text if student else "",
                                                           n.text or "", gold or "", source)
            elif self.judged and self.task is not None:
                reference = gold if source in prompts.LABEL_SOURCES else None
                prompt = prompts.judge_prompt(self.question, n.text or "", self.task.rubric, reference)
            else:
                prompt = prompts.review_prompt(self.question, n.text or "", gold, source)
            for t in self.teachers:
                if t.name != n.agent:
                    calls.append((t, prompt, "review", n.round, n.agent))
                    owners.append(n)
        if not calls:
            return
        reviews = await self._phase(calls)
        self.store.add_edges(self.did, [Edge(rv.id, n.id, "reviews")  # type: ignore[arg-type]
                                        for rv, n in zip(reviews, owners, strict=True)])
        for n in targets:
            scores = [rv.score for rv, o in zip(reviews, owners, strict=True) if o is n and rv.score is not None]
            n.review_mean = sum(scores) / len(scores) if scores else None
            if self.judged and n.kind == "answer" and self.task is not None:  # the judges' verdict is the grade
                n.correct = n.review_mean >= self.task.judge_threshold if n.review_mean is not None else None
                n.accepted = bool(n.correct)
            else:
                n.accepted = n.review_mean is not None and n.review_mean > self.cfg.review_threshold
            if self.eng.observer is not None and n.kind == "answer":
                self.eng.observer.on_review(n.accepted)
        self.store.update_nodes(targets, "review_mean", "accepted", "correct")

    def _judged_best(self, first: list[Node]) -> str | None:
        """A judged task's reference answer: the teacher answer the judges scored highest, if it passed."""
        passed = [n for n in first if n.role == "teacher" and n.correct and n.review_mean is not None]
        return max(passed, key=lambda n: n.review_mean or 0.0).answer if passed else None

    def _consensus(self, first: list[Node]) -> str | None:
        """The teachers' consensus: `pseudo_gold_min_teachers` accepted rationales with the same (valid) answer and
        no accepted rationale with another."""
        accepted = [n for n in first if n.role == "teacher" and n.answered and n.accepted
                    and is_valid(n.answer, self.spec)]
        groups: list[list[Node]] = []
        for n in accepted:
            for g in groups:
                if same_answer(n.answer, g[0].answer, self.spec):
                    g.append(n)
                    break
            else:
                groups.append([n])
        if len(groups) != 1 or len(groups[0]) < self.cfg.pseudo_gold_min_teachers:
            return None
        return groups[0][0].answer

    async def _explain_student_mistake(self, first: list[Node]) -> None:
        """FAIR: every teacher explains the student's wrong round-0 answer (gold as a hint); each explanation is
        peer-reviewed by the other teachers."""
        student = first[0]
        if student.correct is not False:
            return
        prompt = prompts.explanation_prompt(self.question, student.text or "", self.gold or "", self.gold_source)
        made = await self._phase([(t, prompt, "explanation", 0, student.agent) for t in self.teachers])
        self.store.add_edges(self.did, [Edge(m.id, student.id, "explains") for m in made])  # type: ignore[arg-type]
        await self._review([m for m in made if m.status == NodeStatus.OK])

    async def _critique_phase(self, r: int, present: list[Node]) -> dict[str, list[Node]]:
        """Correct agents critique wrong ones; wrong ones reflect given the gold. Returns nodes by agent."""
        by_name = {a.name: a for a in self.agents}
        right = [n for n in present if n.correct]
        wrong = [n for n in present if n.correct is False]
        gold, source = self.gold or "", self.gold_source
        calls: list[Call] = [
            (by_name[c.agent], prompts.critique_prompt(self.question, c.text or "", w.text or "", gold, source),
             "critique", r, w.agent) for c in right for w in wrong]
        calls += [(by_name[w.agent], prompts.reflection_prompt(self.question, w.text or "", gold, source),
                   "reflection", r, None) for w in wrong]
        made = await self._phase(calls)
        answer_of = {n.agent: n for n in present}
        edges = [Edge(m.id, answer_of[m.target_agent or m.agent].id,  # type: ignore[arg-type]
                      "critiques" if m.kind == "critique" else "reflects_on") for m in made]
        self.store.add_edges(self.did, edges)
        out: dict[str, list[Node]] = {}
        for m in made:
            if m.status == NodeStatus.OK:
                out.setdefault(m.target_agent or m.agent, []).append(m)
        return out

    def _block(self, answer: Node, extra: list[Node], budget: int) -> str:
        """One agent's block, within `budget` tokens: reflection and feedback get a share, reasoning the rest."""
        b = self.eng.budget
        reflection = next((e.text for e in extra if e.kind == "reflection"), None)
        feedback = [e.text or "" for e in extra if e.kind == "critique"]
        share = budget // 4 // max(1, len(feedback))
        reflection = b.fit(reflection, budget // 4) if reflection else None
        feedback = [b.fit(f, share) for f in feedback]
        block = prompts.Block("", answer.answer or f"({answer.status})", reflection, tuple(feedback))
        rest = b.count(prompts.render_block(0, block))
        block.reasoning = b.fit(prompts.reasoning_of(answer.text or ""), max(16, budget - rest))
        return prompts.render_block(0, block)

    def _prompt_for(self, agent: Agent, r: int, shown: list[Node], feedback: dict[str, list[Node]]) -> str:
        """The debate prompt of round r as `agent` sees it (blocks shuffled per agent). An agent with a smaller
        context (`prompt_limit`, the student's) gets smaller blocks: its turn always fits, never fails."""
        limit: int | None = getattr(agent, "prompt_limit", None)
        budget = self.cfg.block_tokens
        while True:
            blocks = {n.agent: self._block(n, feedback.get(n.agent, []), budget) for n in shown}
            order = list(blocks)
            random.Random(f"{self.did}-{r}-{agent.name}").shuffle(order)
            rendered = [blocks[name].replace('index="0"', f'index="{i}"', 1) for i, name in enumerate(order, 1)]
            prompt = prompts.debate_prompt(self.question, self.spec, rendered)
            if limit is None or budget <= 16 or self.eng.budget.count(prompt) <= limit:
                return prompt
            budget = max(16, budget // 2)

    async def _debate_round(self, r: int, last: list[Node], feedback: dict[str, list[Node]]) -> list[Node]:
        shown = [n for n in last if n.status != NodeStatus.ERROR]
        nodes = await self._phase([(agent, self._prompt_for(agent, r, shown, feedback), "answer", r, None)
                                   for agent in self.agents])
        seen = [*shown, *(m for ms in feedback.values() for m in ms)]
        self.store.add_edges(self.did, [Edge(s.id, n.id, "saw") for n in nodes for s in seen])  # type: ignore[arg-type]
        return nodes

    # ---- the end -------------------------------------------------------------------------------------------
    def _finish(self, outcome: DebateOutcome, rounds: list[list[Node]], stop: int | None, error: str | None = None
                ) -> DebateResult:
        student = [n for rnd in rounds for n in rnd if n.role == "student" and n.answered]
        trainable = [n for n in self.nodes if n.accepted and (n.kind == "explanation" or n.correct)]
        usable = self.gold is not None and bool(trainable)
        teacher_tokens = sum(n.prompt_tokens + n.completion_tokens for n in self.nodes if n.role == "teacher")
        student_tokens = sum(n.prompt_tokens + n.completion_tokens for n in self.nodes if n.role == "student")
        reviewed = [n for n in rounds[0] if n.role == "teacher" and n.accepted is not None]
        result = DebateResult(
            self.did, outcome, len(rounds), stop, self.gold, self.gold_source, usable,
            student[0].correct if student and student[0].round == 0 else None,
            student[-1].correct if student else None, error,
        )
        status = DebateStatus.FAILED if outcome == DebateOutcome.FAILED else DebateStatus.DONE
        self.store.update_debate(
            self.did, status=status, outcome=outcome, rounds=len(rounds),
            stop_round=stop, usable=usable, gold=self.gold, gold_source=self.gold_source,
            student_correct_first=result.student_correct_first, student_correct_last=result.student_correct_last,
            teacher_tokens=teacher_tokens, student_tokens=student_tokens,
            cost_usd=round(sum(n.cost_usd for n in self.nodes), 6),
            accepted_rationales=sum(bool(n.accepted) for n in reviewed), reviewed_rationales=len(reviewed),
            finished_at=utcnow(), **({"note": error} if error is not None else {}),  # keep the start note
        )
        return result
