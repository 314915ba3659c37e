"""The debate side's store API: the durable capture queue, client labels, and MAGs in and out.

Writers: the gateway's capture sink (`enqueue`), `POST /v1/feedback` (`add_label`), the debate worker
(`claim` ... `finish_item`, `start_debate` ... `finish_debate`). Readers: the CLI and the training loop
(`usable_since`: fresh MAGs usable for training, with every node and edge).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from services.store.db import Database
from services.store.debates import (
    ADMIN_KEY_ID,
    ANONYMOUS_KEY_ID,
    CaptureRow,
    CaptureStatus,
    DeadLetterRow,
    DebateRow,
    DebateStatus,
    EdgeRow,
    LabelRow,
    NodeRow,
    NodeStatus,
    utcnow,
)
from services.tasks.answers import AnswerSpec, answer_type_of, read_for_eval, same_answer, spec_of


@dataclass
class Node:
    """An agent output in a MAG (the in-memory twin of NodeRow; `id` is set once stored)."""

    round: int
    agent: str
    role: str
    kind: str  # answer | critique | reflection | explanation | review
    text: str | None
    status: str  # NodeStatus
    answer: str | None = None
    correct: bool | None = None
    target_agent: str | None = None
    model: str | None = None
    prompt: str | None = None
    score: float | None = None
    review_mean: float | None = None
    accepted: bool | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    cost_usd: float = 0.0
    error: str | None = None
    id: int | None = None

    @property
    def answered(self) -> bool:
        """An answer that is graded right or wrong: a final answer was read (an unparsed, abstained or truncated
        reply, or a failed call, is neither)."""
        return self.kind == "answer" and self.status == NodeStatus.OK


_NODE_FIELDS = [f.name for f in fields(Node)]


TRUSTED_LABEL = CaptureRow.label_trusted.is_not(False)  # NULL: a label from before labellers were recorded


def _owns(labeller: str, owner: str | None) -> bool:
    return labeller in {ADMIN_KEY_ID, owner or ANONYMOUS_KEY_ID}


def _agrees(gold: str | None, label: str) -> bool:
    """Whether a debate's gold says what a client's label says (the label decides the answer type)."""
    return same_answer(gold, label, answer_type_of(label))


@dataclass
class Edge:
    src: int
    dst: int
    kind: str  # saw | critiques | reflects_on | explains | reviews


@dataclass
class Mag:
    id: int
    question: str
    answer_kind: str
    gold: str | None
    gold_source: str
    status: str
    outcome: str | None
    stop_round: int | None
    rounds: int
    usable: bool
    student_correct_first: bool | None
    student_correct_last: bool | None
    teacher_tokens: int
    student_tokens: int
    cost_usd: float
    accepted_rationales: int
    reviewed_rationales: int
    prompt_version: str
    agents: list[dict[str, Any]]
    created_at: datetime
    finished_at: datetime | None
    capture_id: int | None = None
    note: str | None = None
    source: str = "traffic"
    request_id: str | None = None
    task: str | None = None  # None: `default` (a store older than task profiles)
    held_out: bool | None = None  # in its task's evaluation slice: never trained on
    messages: list[dict[str, Any]] | None = None  # the request as the client sent it (traffic only)
    served_output: str | None = None  # what the student replied to the client (traffic only)
    nodes: list[Node] = field(default_factory=list)
    edges: list[Edge] = field(default_factory=list)

    def answers(self, round_: int | None = None) -> list[Node]:
        return [n for n in self.nodes if n.kind == "answer" and (round_ is None or n.round == round_)]

    def of_kind(self, kind: str, round_: int | None = None) -> list[Node]:
        return [n for n in self.nodes if n.kind == kind and (round_ is None or n.round == round_)]

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k not in {"nodes", "edges"}}
        d["created_at"] = self.created_at.isoformat() + "Z"
        d["finished_at"] = self.finished_at.isoformat() + "Z" if self.finished_at else None
        if self.nodes:
            d["nodes"] = [n.__dict__ for n in self.nodes]
            d["edges"] = [e.__dict__ for e in self.edges]
        return d


@dataclass
class CaptureItem:
    id: int
    request_id: str
    source: str
    question: str
    label: str | None
    label_source: str | None
    attempts: int
    task: str = "default"
    held_out: bool = False


class MagStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # ---- the capture queue --------------------------------------------------------------------------------
    def enqueue(self, items: Iterable[dict[str, Any]]) -> int:
        """Insert queue items (CaptureRow fields) in one transaction; a request id already queued is skipped.
        Returns rows added."""
        added = 0
        keys: list[str] = []
        with self.db.session() as s:
            for item in items:
                if s.scalar(select(CaptureRow.id).where(CaptureRow.request_id == item["request_id"])) is not None:
                    continue
                label = s.get(LabelRow, item["request_id"])
                # feedback that arrived before its request: kept only when posted with the request's own key
                if label is not None and not item.get("label") and _owns(label.key_id or ANONYMOUS_KEY_ID,
                                                                         item.get("key_id")):
                    item = {**item, "label": label.answer, "label_source": "feedback",
                            "label_key_id": label.key_id, "label_trusted": label.trusted}
                s.add(CaptureRow(**item))
                added += 1
                keys += [item["request_id"], *([item["response_id"]] if item.get("response_id") else [])]
            s.flush()  # a row the database refuses fails here, inside this batch's transaction
        if keys:
            self._apply_pending_labels(keys)
        return added

    def _apply_pending_labels(self, keys: list[str]) -> None:
        """Labels that arrived while their requests were being written: the label's transaction found no request
        and the request's found no label, each before the other committed. Run after either commits, so the one
        that commits last sees the other's row."""
        with self.db.session() as s:
            for label in s.scalars(select(LabelRow).where(LabelRow.request_id.in_(keys))):
                row = s.scalar(select(CaptureRow).where(
                    (CaptureRow.request_id == label.request_id) | (CaptureRow.response_id == label.request_id)))
                if row is not None and row.label is None and _owns(label.key_id or ANONYMOUS_KEY_ID, row.key_id):
                    row.label, row.label_source, row.updated_at = label.answer, "feedback", utcnow()
                    row.label_key_id, row.label_trusted = label.key_id, label.trusted

    def dead_letter(self, item: dict[str, Any], error: str) -> None:
        """Keep a queue item the store refused, as ASCII-escaped JSON (so any content fits)."""
        with self.db.session() as s:
            s.add(DeadLetterRow(request_id=str(item.get("request_id", ""))[:160], error=error[:2000],
                                payload=json.dumps(item, ensure_ascii=True, default=str)))

    def dead_letters(self) -> list[tuple[str, str]]:
        """(request id, error) of every dead-lettered queue item, oldest first."""
        with self.db.session() as s:
            return [tuple(r) for r in s.execute(select(DeadLetterRow.request_id, DeadLetterRow.error)
                                                .order_by(DeadLetterRow.id))]

    def claim(self, owner: str, n: int, lease_s: float) -> list[CaptureItem]:
        """Take up to n queued items for `owner` (portable: a conditional update, no row locks needed)."""
        now = utcnow()
        with self.db.session() as s:
            queued = CaptureRow.status == CaptureStatus.QUEUED
            ids = list(s.scalars(select(CaptureRow.id).where(queued).order_by(CaptureRow.id).limit(n)))
            if not ids:
                return []
            s.execute(update(CaptureRow).where(CaptureRow.id.in_(ids), queued).values(
                status=CaptureStatus.RUNNING, lease_owner=owner, lease_until=now + timedelta(seconds=lease_s),
                attempts=CaptureRow.attempts + 1, updated_at=now))
            rows = s.scalars(select(CaptureRow).where(CaptureRow.id.in_(ids), CaptureRow.lease_owner == owner,
                                                      CaptureRow.status == CaptureStatus.RUNNING))
            # an untrusted client label is not given to the debate as its gold: the teachers decide (see finish_item)
            return [CaptureItem(r.id, r.request_id, r.source, r.question, *(
                (r.label, r.label_source) if r.label_trusted is not False else (None, None)), r.attempts,
                r.task or "default", bool(r.held_out)) for r in rows]

    def heartbeat(self, owner: str, ids: list[int], lease_s: float) -> None:
        if not ids:
            return
        with self.db.session() as s:
            s.execute(update(CaptureRow).where(CaptureRow.id.in_(ids), CaptureRow.lease_owner == owner).values(
                lease_until=utcnow() + timedelta(seconds=lease_s)))

    def reclaim_expired(self, max_attempts: int) -> tuple[int, int]:
        """Items whose worker died: their debates are marked interrupted (kept, never used for training) and
        the items re-queued, or failed once they used up `max_attempts`. Returns (requeued, failed)."""
        now = utcnow()
        requeued = failed = 0
        with self.db.session() as s:
            stale = list(s.scalars(select(CaptureRow).where(CaptureRow.status == CaptureStatus.RUNNING,
                                                            CaptureRow.lease_until < now)))
            for row in stale:
                if row.debate_id is not None:
                    s.execute(update(DebateRow).where(DebateRow.id == row.debate_id,
                                                      DebateRow.status == DebateStatus.RUNNING)
                              .values(status=DebateStatus.INTERRUPTED, usable=False, finished_at=now,
                                      note="the worker stopped mid-debate; the request was re-queued"))
                row.lease_owner, row.lease_until, row.debate_id, row.updated_at = None, None, None, now
                if row.attempts >= max_attempts:
                    row.status, row.error = CaptureStatus.FAILED, f"interrupted {row.attempts} times"
                    failed += 1
                else:
                    row.status = CaptureStatus.QUEUED
                    requeued += 1
        return requeued, failed

    def attach_debate(self, item_id: int, debate_id: int) -> None:
        with self.db.session() as s:
            s.execute(update(CaptureRow).where(CaptureRow.id == item_id).values(debate_id=debate_id))

    def finish_item(self, item_id: int, *, ok: bool, error: str | None, max_attempts: int) -> str:
        """Close an item after its debate. A label that arrived meanwhile (and differs) re-queues it."""
        with self.db.session() as s:
            row = s.get(CaptureRow, item_id)
            if row is None:
                return "missing"
            row.lease_owner, row.lease_until, row.updated_at = None, None, utcnow()
            row.error = error or row.error  # an earlier note (a dropped label) stays unless a new error replaces it
            debate = s.get(DebateRow, row.debate_id) if row.debate_id else None
            if ok and debate is not None and row.label and debate.gold_source not in {"feedback", "dataset"}:
                if _agrees(debate.gold, row.label):
                    debate.gold_source = "feedback"
                elif row.label_trusted is False:
                    debate.note = "an untrusted client label disagreed with the teachers' consensus: not used"
                else:
                    debate.status, debate.usable = DebateStatus.SUPERSEDED, False
                    debate.note = "a client label arrived during the debate and disagreed with its gold"
                    row.status, row.debate_id = CaptureStatus.QUEUED, None
                    return "requeued"
            if ok:
                row.status = CaptureStatus.DONE
            else:
                row.status = CaptureStatus.FAILED if row.attempts >= max_attempts else CaptureStatus.QUEUED
            return row.status

    def add_label(self, key: str, answer: str, *, key_id: str = ANONYMOUS_KEY_ID, trusted: bool = True,
                  max_relabels: int | None = None, max_pending: int | None = None) -> tuple[str, str | None]:
        """Record a client's correct answer for a request (by x-request-id or completion id), posted with the
        API key `key_id` (only the request's own key, or the admin key, may label it).

        Returns (what happened, request id): `queued` (used by its coming debate), `pending` (its request is
        not queued (yet): kept for when it is), `confirmed` (the finished debate's gold agrees), `requeued`
        (it disagreed or the item had failed: the old debate is superseded and the request debated again),
        `noted` (an untrusted label that disagrees with the finished debate: kept, the debate stands); refused,
        nothing changed: `forbidden` (another key's request or pending label), `relabel_limit` (the request
        was labelled `max_relabels` times after its first label already), `pending_limit` (`key_id` already
        has `max_pending` labels waiting for requests that were never captured).
        """
        try:
            result = self._add_label(key, answer, key_id, trusted, max_relabels, max_pending)
        except IntegrityError:  # a concurrent first label for the same unknown request: theirs is stored now
            result = self._add_label(key, answer, key_id, trusted, max_relabels, max_pending)
        if result[0] == "pending":  # its request may have been written meanwhile
            self._apply_pending_labels([key])
        return result

    def _add_label(self, key: str, answer: str, key_id: str, trusted: bool, max_relabels: int | None,
                   max_pending: int | None) -> tuple[str, str | None]:
        with self.db.session() as s:
            row = s.scalar(select(CaptureRow).where(
                (CaptureRow.request_id == key) | (CaptureRow.response_id == key)))
            if row is None:
                existing = s.get(LabelRow, key)
                if existing is None:
                    if max_pending is not None and self._pending_labels(s, key_id) >= max_pending:
                        return "pending_limit", key
                    s.add(LabelRow(request_id=key, answer=answer, key_id=key_id, trusted=trusted))
                elif not _owns(key_id, existing.key_id):
                    return "forbidden", key
                else:
                    existing.answer, existing.key_id, existing.trusted = answer, key_id, trusted
                return "pending", key
            if not _owns(key_id, row.key_id):
                return "forbidden", row.request_id
            if row.label_source == "feedback":
                if max_relabels is not None and row.relabels >= max_relabels:
                    return "relabel_limit", row.request_id
                row.relabels += 1
            row.label, row.label_source, row.updated_at = answer, "feedback", utcnow()
            row.label_key_id, row.label_trusted = key_id, trusted
            if row.status in {CaptureStatus.QUEUED, CaptureStatus.RUNNING}:
                return "queued", row.request_id
            debate = s.get(DebateRow, row.debate_id) if row.debate_id else None
            if row.status == CaptureStatus.DONE and debate is not None and _agrees(debate.gold, answer):
                debate.gold_source = "feedback"
                return "confirmed", row.request_id
            if row.status == CaptureStatus.DONE and debate is not None and not trusted:
                return "noted", row.request_id
            if debate is not None:
                debate.status, debate.usable = DebateStatus.SUPERSEDED, False
                debate.note = "a client label disagreed with this debate's gold"
            row.status, row.debate_id, row.attempts, row.error = CaptureStatus.QUEUED, None, 0, None
            return "requeued", row.request_id

    def set_label(self, item_id: int, label: str | None, error: str | None = None) -> None:
        """Replace a queued item's label with its canonical form, or drop one its task does not allow (`error`
        says why), so the item's debate and its close agree on the label."""
        with self.db.session() as s:
            row = s.get(CaptureRow, item_id)
            if row is not None:
                row.label, row.updated_at = label, utcnow()
                if label is None:
                    row.label_source, row.error = None, error

    def queue_counts(self) -> dict[str, int]:
        with self.db.session() as s:
            rows = s.execute(select(CaptureRow.status, func.count()).group_by(CaptureRow.status))
            return {status: n for status, n in rows}

    # ---- MAGs: writing --------------------------------------------------------------------------------------
    def start_debate(self, **fields_: Any) -> int:
        with self.db.session() as s:
            row = DebateRow(**fields_)
            s.add(row)
            s.flush()
            return row.id

    def add_nodes(self, debate_id: int, nodes: list[Node]) -> None:
        with self.db.session() as s:
            rows = [NodeRow(debate_id=debate_id, **{k: getattr(n, k) for k in _NODE_FIELDS if k != "id"})
                    for n in nodes]
            s.add_all(rows)
            s.flush()
            for n, r in zip(nodes, rows, strict=True):
                n.id = r.id

    def add_edges(self, debate_id: int, edges: list[Edge]) -> None:
        if edges:
            with self.db.session() as s:
                s.add_all([EdgeRow(debate_id=debate_id, src=e.src, dst=e.dst, kind=e.kind) for e in edges])

    def update_nodes(self, nodes: list[Node], *names: str) -> None:
        with self.db.session() as s:
            for n in nodes:
                s.execute(update(NodeRow).where(NodeRow.id == n.id).values({k: getattr(n, k) for k in names}))

    def update_debate(self, debate_id: int, **values: Any) -> None:
        with self.db.session() as s:
            s.execute(update(DebateRow).where(DebateRow.id == debate_id).values(**values))

    def interrupt_running(self, source: str, since: datetime, note: str) -> int:
        """Mark debates of `source` started after `since` and still running as interrupted (batch mode's cleanup)."""
        with self.db.session() as s:
            r = s.execute(update(DebateRow).where(DebateRow.source == source, DebateRow.status == DebateStatus.RUNNING,
                                                  DebateRow.created_at >= since)
                          .values(status=DebateStatus.INTERRUPTED, usable=False, finished_at=utcnow(), note=note))
            return r.rowcount or 0

    # ---- MAGs: reading --------------------------------------------------------------------------------------
    def _mag(self, s: Any, row: DebateRow, with_graph: bool) -> Mag:
        cap = s.get(CaptureRow, row.capture_id) if row.capture_id else None
        mag = Mag(**{f.name: getattr(row, f.name) for f in fields(Mag)
                     if f.name not in {"nodes", "edges", "request_id", "messages", "served_output"}},
                  request_id=cap.request_id if cap else None, messages=cap.messages if cap else None,
                  served_output=cap.served_output if cap else None)
        if with_graph:
            nodes = s.scalars(select(NodeRow).where(NodeRow.debate_id == row.id).order_by(NodeRow.id))
            mag.nodes = [Node(**{k: getattr(r, k) for k in _NODE_FIELDS}) for r in nodes]
            edges = s.scalars(select(EdgeRow).where(EdgeRow.debate_id == row.id).order_by(EdgeRow.id))
            mag.edges = [Edge(e.src, e.dst, e.kind) for e in edges]
        return mag

    def get(self, debate_id: int) -> Mag | None:
        with self.db.session() as s:
            row = s.get(DebateRow, debate_id)
            return self._mag(s, row, True) if row else None

    def list(self, *, limit: int = 50, usable: bool | None = None, status: DebateStatus | None = None,
             since: datetime | None = None, with_graph: bool = False, newest_first: bool = True,
             held_out: bool | None = None, task: str | None = None) -> list[Mag]:
        q = select(DebateRow)
        if usable is not None:
            q = q.where(DebateRow.usable == usable)
        if held_out is not None:
            q = q.where(DebateRow.held_out.is_(True) if held_out else DebateRow.held_out.isnot(True))
        if task is not None:
            q = q.where(DebateRow.task == task if task != "default" else
                        (DebateRow.task == task) | DebateRow.task.is_(None))
        if status is not None:
            q = q.where(DebateRow.status == status)
        if since is not None:
            q = q.where(DebateRow.finished_at > since)
        q = q.order_by(DebateRow.id.desc() if newest_first else DebateRow.id.asc()).limit(limit)
        with self.db.session() as s:
            return [self._mag(s, r, with_graph) for r in s.scalars(q)]

    def usable_since(self, since: datetime | None = None, limit: int = 10_000) -> list[Mag]:
        """The training loop's query: finished MAGs usable for training, finished after `since`, oldest first."""
        return self.list(limit=limit, usable=True, status=DebateStatus.DONE, since=since, with_graph=True,
                         newest_first=False)

    def count_usable_since(self, since: datetime | None) -> int:
        """Usable finished MAGs that finished after `since` (the scheduler's "fresh MAGs")."""
        q = select(func.count()).select_from(DebateRow).where(DebateRow.usable.is_(True),
                                                              DebateRow.status == DebateStatus.DONE)
        if since is not None:
            q = q.where(DebateRow.finished_at > since)
        with self.db.session() as s:
            return s.scalar(q) or 0

    def live_accuracy(self, adapter: str, since: datetime | None = None,
                      task_spec: Callable[[str], AnswerSpec] | None = None) -> tuple[int, int]:
        """(labelled, correct) requests served by `adapter`: trusted clients' labels (POST /v1/feedback) against the
        answer that was served, read as its task's app reads it (`task_spec`: a task's answer spec; without it, the
        type the label implies), a live accuracy signal for a freshly promoted version."""
        q = select(CaptureRow.served_output, CaptureRow.label, CaptureRow.task).where(
            CaptureRow.served_adapter == adapter, CaptureRow.label_source == "feedback", CaptureRow.label.is_not(None),
            TRUSTED_LABEL)
        if since is not None:
            q = q.where(CaptureRow.created_at >= since)
        with self.db.session() as s:
            rows = s.execute(q).all()
        correct = 0
        for out, label, task in rows:
            spec = task_spec(task or "default") if task_spec is not None else spec_of(answer_type_of(label))
            correct += same_answer(read_for_eval(out, spec), label, spec)
        return len(rows), correct

    def teacher_spend_since(self, since: datetime) -> tuple[int, float]:
        """(tokens, estimated USD) the teachers used in debates started since `since` (the hourly budget)."""
        q = (select(func.coalesce(func.sum(NodeRow.prompt_tokens + NodeRow.completion_tokens), 0),
                    func.coalesce(func.sum(NodeRow.cost_usd), 0.0))
             .join(DebateRow, DebateRow.id == NodeRow.debate_id)
             .where(DebateRow.created_at >= since, NodeRow.role == "teacher"))
        with self.db.session() as s:
            tokens, usd = s.execute(q).one()
        return int(tokens), float(usd)

    def eval_slice(self, task: str, limit: int) -> list[tuple[str, list[dict[str, Any]], str]]:
        """A task's held-out requests that carry a gold, newest first: (request id, messages as sent, gold).

        The gold is the client's trusted label when there is one, else that of the request's finished debate (a
        label or the teachers' consensus)."""
        task_is = CaptureRow.task == task if task != "default" else (
            (CaptureRow.task == task) | CaptureRow.task.is_(None))
        label = case((TRUSTED_LABEL, CaptureRow.label), else_=None)
        q = (select(CaptureRow.request_id, CaptureRow.messages, label, DebateRow.gold)
             .outerjoin(DebateRow, (DebateRow.id == CaptureRow.debate_id) & (DebateRow.status == DebateStatus.DONE))
             .where(CaptureRow.held_out.is_(True), CaptureRow.source == "traffic", task_is)
             .where(label.is_not(None) | DebateRow.gold.is_not(None))
             .order_by(CaptureRow.id.desc()).limit(limit))
        with self.db.session() as s:
            return [(rid, msgs, label if label is not None else gold) for rid, msgs, label, gold in s.execute(q)]

    def task_counts(self, since: datetime | None = None) -> dict[str, int]:
        """Captured traffic per task (the gate's traffic weights)."""
        q = select(CaptureRow.task, func.count()).where(CaptureRow.source == "traffic").group_by(CaptureRow.task)
        if since is not None:
            q = q.where(CaptureRow.created_at >= since)
        out: dict[str, int] = {}
        with self.db.session() as s:
            for task, n in s.execute(q):
                out[task or "default"] = out.get(task or "default", 0) + n
        return out

    @staticmethod
    def _pending_labels(s: Session, key_id: str) -> int:
        """Labels `key_id` posted for requests that are not in the capture queue."""
        captured = select(CaptureRow.id).where(CaptureRow.request_id == LabelRow.request_id).exists()
        return s.scalar(select(func.count()).select_from(LabelRow).where(LabelRow.key_id == key_id, ~captured)) or 0

    def task_of(self, key: str, key_id: str | None = None) -> str | None:
        """The task of a captured request (by request id or completion id); None when it is not captured, or,
        with `key_id`, when that key may not label it (so a refusal tells nothing of another key's request beyond
        that it exists: not its task nor what answers it takes)."""
        with self.db.session() as s:
            row = s.execute(select(CaptureRow.task, CaptureRow.key_id).where(
                (CaptureRow.request_id == key) | (CaptureRow.response_id == key))).first()
            if row is None or (key_id is not None and not _owns(key_id, row[1])):
                return None
            return row[0] or "default"

    def stats(self) -> dict[str, Any]:
        """Totals for metrics and the CLI."""
        with self.db.session() as s:
            done = DebateRow.status == DebateStatus.DONE
            outcomes = dict(s.execute(select(DebateRow.outcome, func.count()).where(done)
                                      .group_by(DebateRow.outcome)).all())
            usable = s.scalar(select(func.count()).select_from(DebateRow).where(
                DebateRow.usable.is_(True), done)) or 0
            reviewed, accepted = s.execute(select(func.coalesce(func.sum(DebateRow.reviewed_rationales), 0),
                                                  func.coalesce(func.sum(DebateRow.accepted_rationales), 0))
                                           .where(done)).one()
            overruled = s.scalar(select(func.count()).select_from(DebateRow).where(
                DebateRow.status == DebateStatus.SUPERSEDED, DebateRow.gold_source == "consensus")) or 0
        return {"outcomes": outcomes, "usable": usable, "reviewed": int(reviewed), "accepted": int(accepted),
                "overruled": overruled, "queue": self.queue_counts()}
