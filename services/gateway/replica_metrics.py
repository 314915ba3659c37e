"""A gateway replica's own series on a port of its own, for Prometheus to scrape replica by replica.

Through Ray Serve's proxy, GET /metrics reaches whichever gateway replica Serve picks: with several replicas, each
scrape would read another replica's counters. So each replica also serves its own registry (requests, tokens,
latencies) on a port of its own, on its node's address (loopback while the service listens on loopback), and
reports where on the store's scrape targets. GET /metrics/targets lists them in Prometheus' HTTP service discovery
format, and GET /metrics?part=shared gives the rest once (the promoted version, the replicas' readiness, the debate
worker's and the scheduler's series): deploy/prometheus/prometheus-cluster.yml scrapes both, and the recording rules
sum the replicas' series.
"""

from __future__ import annotations

import logging
import threading
from contextlib import suppress

from prometheus_client import start_http_server

from services.gateway.metrics import ServingMetrics
from services.store.replicas import ScrapeTargets

log = logging.getLogger(__name__)
REPORT_EVERY_S = 3.0


class ReplicaMetricsServer:
    def __init__(self, metrics: ServingMetrics, targets: ScrapeTargets, replica_id: str, host: str) -> None:
        self.targets, self.replica_id = targets, replica_id
        self.server, _ = start_http_server(0, addr=host, registry=metrics.registry)
        self.address = f"{host}:{self.server.server_port}"
        self._stop = threading.Event()
        threading.Thread(target=self._report, name="scrape-target", daemon=True).start()

    def _report(self) -> None:
        while True:
            try:
                self.targets.report(self.replica_id, self.address)
            except Exception as e:  # the store away for a moment: Prometheus keeps the last target meanwhile
                log.warning("cannot report the scrape target: %r", e)
            if self._stop.wait(REPORT_EVERY_S):
                return

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        with suppress(Exception):
            self.targets.leave(self.replica_id)
