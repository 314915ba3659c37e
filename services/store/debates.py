"""Tables of the debate side: the capture queue (and its dead letters), client labels, and the Multi-Agent
Interaction Graphs.

A MAG is a `DebateRow` with its `NodeRow`s (every agent output: answers per round, critiques, self-reflections,
peer reviews, with tokens, latency and cost) and `EdgeRow`s (who saw, critiqued, reflected on, reviewed what).
Nodes are written as each phase ends, so a debate cut short keeps everything it recorded.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from services.store.db import Base


def utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)  # stored naive UTC: SQLite keeps no zone


# The key ids that are no hash of a key: requests made without keys, and the admin key (which may label any request).
ANONYMOUS_KEY_ID, ADMIN_KEY_ID = "anonymous", "admin"


class CaptureStatus(StrEnum):
    """A capture queue item's `status`: queued for a debate, running one (leased by a worker), done, or failed
    after using up its attempts."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class DebateStatus(StrEnum):
    """A debate's `status`: running, then done (its outcome recorded), interrupted (its worker stopped), failed,
    or superseded (a client's later label re-queued its request; never usable)."""

    RUNNING = "running"
    DONE = "done"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    SUPERSEDED = "superseded"


class DebateOutcome(StrEnum):
    """How a finished debate ended (its `outcome`): the student solved it within the rounds or not, no gold to
    grade against, or failed (a call the debate could not do without)."""

    SOLVED = "solved"
    UNSOLVED = "unsolved"
    NO_GOLD = "no_gold"
    FAILED = "failed"


class CaptureRow(Base):
    """One finished request (or one dataset item) waiting for, running, or done with its debate."""

    __tablename__ = "capture_queue"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(160), unique=True, index=True)
    response_id: Mapped[str | None] = mapped_column(String(160), index=True)
    source: Mapped[str] = mapped_column(String(32), default="traffic")  # traffic | batch
    task: Mapped[str | None] = mapped_column(String(64), default="default")  # its task profile (NULL: default)
    held_out: Mapped[bool | None] = mapped_column(Boolean, default=False)  # in its task's evaluation slice
    question: Mapped[str] = mapped_column(Text)
    messages: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    served_output: Mapped[str | None] = mapped_column(Text)
    served_adapter: Mapped[str | None] = mapped_column(String(160))
    label: Mapped[str | None] = mapped_column(Text)  # the correct answer, when a client or dataset gave one
    label_source: Mapped[str | None] = mapped_column(String(32))  # feedback | dataset
    key_id: Mapped[str | None] = mapped_column(String(64))  # the API key that made the request (NULL: anonymous)
    label_key_id: Mapped[str | None] = mapped_column(String(64))  # the key that posted its feedback label
    label_trusted: Mapped[bool | None] = mapped_column(Boolean)  # a trusted labeller's (NULL: from before keys)
    relabels: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # feedback after the first
    status: Mapped[str] = mapped_column(String(16), default=CaptureStatus.QUEUED, index=True)  # CaptureStatus
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(80))
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    debate_id: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class LabelRow(Base):
    """A correct answer posted by a client (POST /v1/feedback), possibly before its request is queued."""

    __tablename__ = "labels"
    request_id: Mapped[str] = mapped_column(String(160), primary_key=True)
    answer: Mapped[str] = mapped_column(Text)
    key_id: Mapped[str | None] = mapped_column(String(64))  # who posted it: applied only to that key's request
    trusted: Mapped[bool | None] = mapped_column(Boolean)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DeadLetterRow(Base):
    """A captured request the store refused to insert (after its batch was split to find it), kept for a look."""

    __tablename__ = "capture_dead_letters"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(160), index=True)
    payload: Mapped[str] = mapped_column(Text)  # the row as ASCII-escaped JSON, so it stores whatever it holds
    error: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class DebateRow(Base):
    __tablename__ = "debates"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    capture_id: Mapped[int | None] = mapped_column(ForeignKey("capture_queue.id"), index=True)
    source: Mapped[str] = mapped_column(String(160), default="traffic")  # traffic | batch:<dataset>
    task: Mapped[str | None] = mapped_column(String(64), default="default")
    held_out: Mapped[bool | None] = mapped_column(Boolean, default=False)  # never trained on: the gate measures it
    question: Mapped[str] = mapped_column(Text)
    answer_kind: Mapped[str] = mapped_column(String(16))
    gold: Mapped[str | None] = mapped_column(Text)
    gold_source: Mapped[str] = mapped_column(String(16), default="none")  # feedback|dataset|consensus|none
    status: Mapped[str] = mapped_column(String(16), default=DebateStatus.RUNNING, index=True)  # DebateStatus
    outcome: Mapped[str | None] = mapped_column(String(32), index=True)  # DebateOutcome
    stop_round: Mapped[int | None] = mapped_column(Integer)
    rounds: Mapped[int] = mapped_column(Integer, default=0)
    usable: Mapped[bool] = mapped_column(Boolean, default=False, index=True)
    student_correct_first: Mapped[bool | None] = mapped_column(Boolean)
    student_correct_last: Mapped[bool | None] = mapped_column(Boolean)
    teacher_tokens: Mapped[int] = mapped_column(Integer, default=0)
    student_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    accepted_rationales: Mapped[int] = mapped_column(Integer, default=0)
    reviewed_rationales: Mapped[int] = mapped_column(Integer, default=0)
    prompt_version: Mapped[str] = mapped_column(String(32))
    agents: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)  # name, role, model
    note: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, index=True)


class NodeStatus(StrEnum):
    """An agent output's `status`: ok (an answer read, a review's score read, a rationale written), unparsed,
    abstained (an answer that declines), truncated (cut at the token limit), or error (the call failed). The first
    four are an answer reading's (services/tasks/answers.py `Status`)."""

    OK = "ok"
    UNPARSED = "unparsed"
    ABSTAINED = "abstained"
    TRUNCATED = "truncated"
    ERROR = "error"


class NodeRow(Base):
    """One agent output: an answer in a round, a critique, a self-reflection, or a peer review."""

    __tablename__ = "mag_nodes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    debate_id: Mapped[int] = mapped_column(ForeignKey("debates.id", ondelete="CASCADE"))
    round: Mapped[int] = mapped_column(Integer)
    agent: Mapped[str] = mapped_column(String(80))
    role: Mapped[str] = mapped_column(String(16))  # student | teacher
    model: Mapped[str | None] = mapped_column(String(160))  # what answered: teacher model, student@vN
    kind: Mapped[str] = mapped_column(String(16))  # answer | critique | reflection | explanation | review
    target_agent: Mapped[str | None] = mapped_column(String(80))  # critique / review: whose answer
    prompt: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str | None] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # NodeStatus
    correct: Mapped[bool | None] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)  # review: the 1-5 score read
    review_mean: Mapped[float | None] = mapped_column(Float)  # answer: mean peer score
    accepted: Mapped[bool | None] = mapped_column(Boolean)  # answer / explanation: passed FAIR peer review
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    latency_s: Mapped[float] = mapped_column(Float, default=0.0)
    cost_usd: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ix_nodes_debate_round", "debate_id", "round"),)


class EdgeRow(Base):
    __tablename__ = "mag_edges"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    debate_id: Mapped[int] = mapped_column(ForeignKey("debates.id", ondelete="CASCADE"), index=True)
    src: Mapped[int] = mapped_column(ForeignKey("mag_nodes.id", ondelete="CASCADE"))
    dst: Mapped[int] = mapped_column(ForeignKey("mag_nodes.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))  # saw | critiques | reflects_on | explains | reviews
