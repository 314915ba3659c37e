"""Prometheus metrics of the debate service (`distillery_debate_*`, `distillery_teacher_*`).

Counters and histograms live in the debate worker's process; queue depth, usable MAGs and the all-time
peer-review acceptance ratio are read from the store at scrape time, so they are right after a restart and
agree across replicas. The gateway's /metrics appends this exposition to its own (one scrape target).
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from services.debate.agents import Agent, Reply
from services.debate.engine import DebateResult
from services.store.debates import CaptureStatus
from services.store.mags import MagStore

LATENCY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120)
QUEUE_STATES = tuple(CaptureStatus)


class _Overruled(Collector):
    """Debates whose teachers' consensus a client label later contradicted, counted from the store at scrape time
    (right after a restart, the same from every replica)."""

    def __init__(self, store: MagStore | None) -> None:
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily]:
        if self.store is not None:
            yield CounterMetricFamily("distillery_debate_consensus_overruled",
                                      "Debates whose teachers' consensus a client label later contradicted.",
                                      value=self.store.stats()["overruled"])


class DebateMetrics:
    def __init__(self, store: MagStore | None = None) -> None:
        self.store = store
        r = self.registry = CollectorRegistry()
        self.debates = Counter("distillery_debates", "Finished debates by outcome.", ["outcome"], registry=r)
        self.rounds = Histogram("distillery_debate_rounds", "Rounds a debate ran (round 0 counts as one).",
                                buckets=(1, 2, 3, 4, 5, 6, 8, 10), registry=r)
        self.requests = Counter("distillery_teacher_requests", "Agent calls by agent, role, kind and outcome.",
                                ["agent", "role", "kind", "outcome"], registry=r)
        self.errors = Counter("distillery_teacher_errors", "Failed agent calls by agent and error class.",
                              ["agent", "error"], registry=r)
        self.misconfigured = Gauge("distillery_teacher_misconfigured",
                                   "1 while the agent's endpoint refuses its requests with a 4xx (its configuration "
                                   "needs fixing); 0 again after its next successful reply.", ["agent"], registry=r)
        self.latency = Histogram("distillery_teacher_latency_seconds", "Agent call latency, retries included.",
                                 ["agent"], buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("distillery_teacher_tokens", "Tokens used by agent and type.", ["agent", "type"],
                              registry=r)
        self.cost = Counter("distillery_teacher_cost_usd", "Estimated spend (configured prices).", ["agent"],
                            registry=r)
        self.replies = Counter("distillery_teacher_replies", "Answer replies by agent and how they were read: ok "
                               "(graded), unparsed, abstained, truncated (never graded).", ["agent", "status"],
                               registry=r)
        self.reviews = Counter("distillery_peer_review_rationales", "Teacher rationales after peer review.",
                               ["result"], registry=r)
        self.queue = Gauge("distillery_capture_queue", "Capture queue items by state (from the store).",
                           ["state"], registry=r)
        self.usable = Gauge("distillery_mags_usable", "Finished MAGs usable for training (from the store).",
                            registry=r)
        self.acceptance = Gauge("distillery_peer_review_acceptance_ratio",
                                "Accepted / reviewed teacher rationales over all stored debates.", registry=r)
        r.register(_Overruled(store))
        self.yield_wait = Counter("distillery_debate_yield_wait_seconds",
                                  "Time student turns waited for serving traffic to go idle.", registry=r)
        self.preempted = Counter("distillery_debate_preemptions", "Student turns aborted for serving traffic.",
                                 registry=r)
        self._gate_seen = (0.0, 0)

    # ---- the engine's observer ---------------------------------------------------------------------------
    def on_reply(self, agent: Agent, kind: str, reply: Reply) -> None:
        outcome = "error" if reply.error else "ok"
        self.requests.labels(agent.name, agent.role, kind, outcome).inc()
        if reply.error:
            self.errors.labels(agent.name, reply.error.split(":")[0][:40]).inc()
            if reply.error.startswith("misconfigured"):
                self.misconfigured.labels(agent.name).set(1)
        else:
            self.misconfigured.labels(agent.name).set(0)
        self.latency.labels(agent.name).observe(reply.latency_s)
        self.tokens.labels(agent.name, "prompt").inc(reply.prompt_tokens)
        self.tokens.labels(agent.name, "completion").inc(reply.completion_tokens)
        if reply.cost_usd:
            self.cost.labels(agent.name).inc(reply.cost_usd)

    def on_answer(self, agent: Agent, status: str) -> None:
        self.replies.labels(agent.name, status).inc()

    def on_review(self, accepted: bool) -> None:
        self.reviews.labels("accepted" if accepted else "rejected").inc()

    def on_finish(self, result: DebateResult) -> None:
        self.debates.labels(result.outcome).inc()
        self.rounds.observe(result.rounds)

    def sync_gate(self, waited_s: float, preempted: int) -> None:
        """The traffic gate keeps running totals; counters get the increase since the last scrape."""
        self.yield_wait.inc(max(0.0, waited_s - self._gate_seen[0]))
        self.preempted.inc(max(0, preempted - self._gate_seen[1]))
        self._gate_seen = (waited_s, preempted)

    # ---- exposition ----------------------------------------------------------------------------------------
    def render(self) -> bytes:
        if self.store is not None:
            stats = self.store.stats()
            for state in QUEUE_STATES:
                self.queue.labels(state).set(stats["queue"].get(state, 0))
            self.usable.set(stats["usable"])
            self.acceptance.set(stats["accepted"] / stats["reviewed"] if stats["reviewed"] else 0)
        return generate_latest(self.registry)
