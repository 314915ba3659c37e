"""MAGs as text for people: one line per debate (`mags list`) and the whole debate round by round (`mags show`)."""

from __future__ import annotations

import textwrap

from services.store.debates import NodeStatus
from services.store.mags import Mag, Node


def _short(text: str | None, width: int) -> str:
    t = " ".join((text or "").split())
    return t if len(t) <= width else t[: width - 3] + "..."


def summary_row(m: Mag) -> list[str]:
    first = {None: "-", True: "right", False: "wrong"}[m.student_correct_first]
    last = {None: "-", True: "right", False: "wrong"}[m.student_correct_last]
    task = (m.task or "default") + (" (held out)" if m.held_out else "")
    return [str(m.id), m.created_at.strftime("%Y-%m-%d %H:%M:%S"), task, m.status, m.outcome or "-", str(m.rounds),
            f"{m.gold or '-'} ({m.gold_source})", f"{first}->{last}", "yes" if m.usable else "no",
            f"{m.accepted_rationales}/{m.reviewed_rationales}", str(m.teacher_tokens), _short(m.question, 48)]


SUMMARY_HEADER = ["ID", "CREATED", "TASK", "STATUS", "OUTCOME", "ROUNDS", "GOLD (SOURCE)", "STUDENT", "USABLE",
                  "ACCEPTED", "T-TOKENS", "QUESTION"]


def _mark(n: Node) -> str:
    if n.status == NodeStatus.ERROR:
        return f"ERROR ({n.error})"
    if n.status == NodeStatus.ABSTAINED:
        return "abstained (not graded)"
    if n.status == NodeStatus.UNPARSED:
        return "no readable final answer (not graded)"
    if n.status == NodeStatus.TRUNCATED:
        return "cut at max_tokens (not graded)"
    return f"{n.answer}  {'RIGHT' if n.correct else 'WRONG' if n.correct is False else ''}".rstrip()


def _error_mark(n: Node) -> str:
    """A failed call's mark after a rationale's header; nothing for one that came back."""
    return f" {_mark(n)}" if n.status == NodeStatus.ERROR else ""


def _body(text: str | None, indent: str = "      ", width: int = 100, max_lines: int = 8) -> str:
    lines: list[str] = []
    for para in (text or "").strip().splitlines():
        lines += textwrap.wrap(para, width - len(indent)) or [""]
    if len(lines) > max_lines:
        lines = [*lines[: max_lines - 1], f"... ({len(lines) - max_lines + 1} more lines)"]
    return "\n".join(indent + line for line in lines)


def _review(n: Node) -> str:
    if n.review_mean is None and n.accepted is None:
        return ""
    return f"   peer review: {n.review_mean if n.review_mean is not None else '-'} " \
           f"({'accepted' if n.accepted else 'rejected'})"


def render_mag(m: Mag, full: bool = False) -> str:
    max_lines = 10_000 if full else 8
    out = [f"MAG {m.id}  [{m.status}, {m.outcome or 'in progress'}]  source: {m.source}"
           + (f"  request: {m.request_id}" if m.request_id else ""),
           f"question: {m.question}",
           f"gold: {m.gold or '-'} ({m.gold_source})   rounds: {m.rounds}   stop round: "
           f"{m.stop_round if m.stop_round is not None else '-'}   usable for training: {'yes' if m.usable else 'no'}",
           f"agents: {', '.join(a['name'] + ' (' + a['role'] + ')' for a in m.agents)}   prompts: {m.prompt_version}",
           f"tokens: teachers {m.teacher_tokens}, student {m.student_tokens}   est. cost ${m.cost_usd:.4f}"]
    if m.note:
        out.append(f"note: {m.note}")
    for r in sorted({n.round for n in m.nodes}):
        out.append(f"\n=== round {r} ===")
        for n in m.answers(r):
            out.append(f"  [{n.agent}] answer: {_mark(n)}{_review(n)}")
            out.append(_body(n.text, max_lines=max_lines))
        explanations = m.of_kind("explanation", r)
        if explanations:
            out.append("  --- FAIR: the teachers explain the student's mistake ---")
        for n in explanations:
            out.append(f"  {n.agent} explains:{_review(n)}" + _error_mark(n))
            out.append(_body(n.text, max_lines=max_lines))
        reviews = m.of_kind("review", r)
        if reviews:
            out.append("  --- peer review (FAIR) ---")
            out += [f"  {n.agent} -> {n.target_agent}: " + (str(n.score) if n.score is not None else
                    _mark(n) if n.status == NodeStatus.ERROR else "unparsable (dropped)") for n in reviews]
        crit, refl = m.of_kind("critique", r), m.of_kind("reflection", r)
        if crit or refl:
            out.append("  --- critiques and self-reflections ---")
        for n in crit:
            out.append(f"  {n.agent} critiques {n.target_agent}:" + _error_mark(n))
            out.append(_body(n.text, max_lines=max_lines))
        for n in refl:
            out.append(f"  {n.agent} reflects:" + _error_mark(n))
            out.append(_body(n.text, max_lines=max_lines))
    return "\n".join(out)
