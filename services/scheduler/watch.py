"""After a promotion, watch live signals and roll back by ourselves on a regression.

Two signals, for `watch.window_s` after each promotion:
  errors    the share of server errors (5xx) among requests to `student` served by the new version, read from
            the gateway's own Prometheus counters (what an SRE's alert reads), counted from the promotion on;
  feedback  live accuracy: trusted labellers' labels (POST /v1/feedback) against the answers the new version served,
            compared with the previous version's live accuracy.
A rollback goes through the admin API like an operator's (load the previous version first, then swap).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from services.config import WatchSettings
from services.registry import AdapterRegistry
from services.store.debates import utcnow
from services.store.mags import MagStore
from services.tasks.answers import AnswerSpec

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveAccuracy:
    version: str
    labels: int
    correct: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.labels if self.labels else 0.0


def last_promotion(registry: AdapterRegistry) -> tuple[str, datetime] | None:
    """(version, when) of the promotion now in force, or None when the last log entry is not a promotion."""
    promoted, history = registry.promoted(), registry.history()
    if promoted is None or not history or history[-1]["kind"] != "promote" \
            or history[-1]["version"] != promoted.name:
        return None
    return promoted.name, datetime.fromisoformat(history[-1]["at"]).replace(tzinfo=None)


def live_accuracy(registry: AdapterRegistry, store: MagStore, version: str, since: datetime,
                  spec_of: Callable[[str], AnswerSpec] | None = None) -> dict[str, LiveAccuracy]:
    """Labelled live accuracy of `version` since its promotion and of what served before it (all time): the
    feedback signal of the watch, and the `distillery_live_accuracy` gauges an SRE's alert reads."""
    previous = registry.rollback_target()
    prev_name = previous.name if previous else registry.base_model
    return {"promoted": LiveAccuracy(version, *store.live_accuracy(version, since, spec_of)),
            "previous": LiveAccuracy(prev_name, *store.live_accuracy(prev_name, None, spec_of))}


def request_counts(metrics_text: str, model: str, adapter: str) -> tuple[float, float]:
    """(requests, server errors) for `model` served by `adapter`, from the gateway's exposition."""
    total = errors = 0.0
    for fam in text_string_to_metric_families(metrics_text):
        if fam.name != "distillery_requests":
            continue
        for s in fam.samples:
            if s.name.endswith("_total") and s.labels.get("model") == model and s.labels.get("adapter") == adapter:
                total += s.value
                errors += s.value if s.labels.get("status", "").startswith("5") else 0.0
    return total, errors


class RolloutWatch:
    def __init__(self, cfg: WatchSettings, registry: AdapterRegistry, store: MagStore | None,
                 metrics_text: Callable[[], str], rollback: Callable[[str], object],
                 spec_of: Callable[[str], AnswerSpec] | None = None) -> None:
        """`spec_of`: a task's answer spec (`Settings.task(name).spec`), to read labelled replies per task."""
        self.cfg, self.registry, self.store, self.spec_of = cfg, registry, store, spec_of
        self.metrics_text, self.rollback = metrics_text, rollback
        self._watching: tuple[str, datetime] | None = None
        self._baseline = (0.0, 0.0)
        self.rollbacks = 0

    def check(self) -> str | None:
        """One look at the signals; rolls back and returns the reason on a regression."""
        current = last_promotion(self.registry)
        if current is None:
            self._watching = None
            return None
        version, at = current
        if utcnow() - at > timedelta(seconds=self.cfg.window_s):
            return None
        name = self.registry.served_name
        counts = request_counts(self.metrics_text(), name, version)
        if self._watching != (version, at):
            # First look at this promotion: requests counted before now belong to no watch window (e.g. a
            # restart of this watcher); start from here.
            self._watching, self._baseline = (version, at), counts
            return None
        total, errors = counts[0] - self._baseline[0], counts[1] - self._baseline[1]
        reason = None
        if total >= self.cfg.min_requests and errors / total > self.cfg.max_error_rate:
            reason = (f"error rate {errors / total:.1%} of {total:.0f} requests on {version} exceeds "
                      f"{self.cfg.max_error_rate:.1%}")
        elif self.store is not None:
            reason = self._feedback(version, at)
        if reason is not None:
            log.error("auto-rollback of %s: %s", version, reason)
            self.rollback(f"auto-rollback: {reason}")
            self.rollbacks += 1
            self._watching = None
        return reason

    def _feedback(self, version: str, since: datetime) -> str | None:
        assert self.store is not None
        live = live_accuracy(self.registry, self.store, version, since, self.spec_of)
        cur, prev = live["promoted"], live["previous"]
        if cur.labels < self.cfg.min_labels or prev.labels < self.cfg.min_labels:
            return None
        if cur.accuracy < prev.accuracy - self.cfg.max_accuracy_drop:
            return (f"live accuracy {cur.accuracy:.1%} on {cur.labels} labelled requests, {prev.accuracy:.1%} for "
                    f"{prev.version} before it (allowed drop {self.cfg.max_accuracy_drop:.0%})")
        return None
