"""Prometheus metrics of the serving path, all under the `distillery_` namespace.

They live in the gateway process, which sees every request, and are exposed at GET /metrics. Private registries
keep Ray's and vLLM's own process metrics out of Distillery's namespace: `registry` holds this replica's own series
(its requests, tokens, latencies: summed over replicas, see replica_metrics.py), `shared` what every gateway replica
reads alike from the store (the promoted version, the student replicas' readiness).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, generate_latest

from services.store.replicas import ReplicaState

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30)
TOKEN_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
SWAP_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)


class ServingMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "distillery_requests", "Finished requests by endpoint, model (its canonical name: the served alias, "
            "the base model or an adapter version; `unknown` if it does not exist, `-` if refused before resolving "
            "it), serving adapter and status.",
            ["endpoint", "model", "adapter", "status"], registry=r,
        )
        self.in_flight = Gauge("distillery_requests_in_flight", "Generation requests running now.", registry=r)
        self.sequences_in_flight = Gauge(
            "distillery_sequences_in_flight", "Sequences (prompts x n) admitted and not yet finished: the slots "
            "admission charges, held from before tokenisation until the response ends.", registry=r,
        )
        self.latency = Histogram(
            "distillery_request_latency_seconds", "End-to-end latency of generation requests.",
            ["endpoint", "adapter"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.ttft = Histogram(
            "distillery_time_to_first_token_seconds", "Time from request arrival to the first generated token.",
            ["endpoint", "adapter"], buckets=TTFT_BUCKETS, registry=r,
        )
        self.prompt_tokens = Counter(
            "distillery_prompt_tokens", "Prompt tokens processed.", ["adapter"], registry=r
        )
        self.generation_tokens = Counter(
            "distillery_generation_tokens", "Completion tokens generated.", ["adapter"], registry=r
        )
        self.tokens_per_query = Histogram(
            "distillery_tokens_per_query", "Total tokens (prompt + completion) of one request, by adapter version.",
            ["adapter"], buckets=TOKEN_BUCKETS, registry=r,
        )
        self.completion_tokens_per_query = Histogram(
            "distillery_completion_tokens_per_query", "Completion tokens of one request, by adapter version.",
            ["adapter"], buckets=TOKEN_BUCKETS, registry=r,
        )
        shared = self.shared = CollectorRegistry()
        self.promoted = Info(
            "distillery_promoted_adapter", "The adapter version `student` currently resolves to.", registry=shared
        )
        self.replica_ready = Gauge(
            "distillery_student_replica_ready", "1 for a student replica serving the promoted version, 0 for one "
            "that cannot (it refuses `student`), by replica, node and what its `student` serves; read from the "
            "replica board, so every gateway replica reports all student replicas alike.",
            ["replica", "node", "serving"], registry=shared,
        )
        self.adapter_load = Histogram(
            "distillery_adapter_load_seconds", "Time to load an adapter version into the engine.",
            buckets=SWAP_BUCKETS, registry=r,
        )
        self.adapter_swap = Histogram(
            "distillery_adapter_swap_seconds", "Time of a promotion or rollback, load included.",
            ["action"], buckets=SWAP_BUCKETS, registry=r,
        )
        self.adapter_events = Counter(
            "distillery_adapter_events", "Adapter operations by action and outcome.", ["action", "outcome"],
            registry=r,
        )
        self.task_requests = Counter(
            "distillery_task_requests", "Chat requests by task and how it was recognised: `metadata`, `rule`, "
            "`default`, or `unknown` (a `metadata.task` that is not configured, served and captured as `default`).",
            ["task", "via"], registry=r,
        )
        self.capture_dropped = Counter(
            "distillery_capture_dropped", "Finished requests the capture sink could not take.", registry=r
        )

    def set_promoted(self, name: str) -> None:
        self.promoted.info({"version": name})

    def set_replicas(self, states: list[ReplicaState]) -> None:
        self.replica_ready.clear()  # replicas that left take their series with them
        for st in states:
            self.replica_ready.labels(st.replica_id, st.node_id, st.serving).set(1 if st.ready else 0)

    def render(self, shared_only: bool = False) -> bytes:
        """The exposition: this replica's series and the shared ones, or only the shared ones."""
        return generate_latest(self.shared) + (b"" if shared_only else generate_latest(self.registry))
