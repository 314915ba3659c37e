"""Starts Distillery: resolve the base model, start Ray, deploy Gateway -> Student on Ray Serve."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from services.cluster import StateNotShared, alive_nodes, check_shared_state, cluster_address
from services.config import Settings
from services.gateway.exposure import check_exposure
from services.service_client import service_url
from services.student.model_prep import base_model_id, resolve_base_model
from services.teachers.token import teachers_token

APP_NAME = "distillery"
log = logging.getLogger(__name__)
Progress = Callable[[str], None]


def teachers_url(settings: Settings) -> str:
    """Where the built-in reference teachers answer (the service's own API, /teachers/<name>/v1), behind
    `teachers_token(settings)`."""
    return f"{service_url(settings)}/teachers"


def ray_address_file(settings: Settings) -> Path:
    """Where a running service leaves its Ray cluster's address (read by `ray_jobs.cycle.connect_ray`)."""
    return settings.data_dir / "ray-address"


def build_application(settings: Settings, model_path: str) -> Any:
    from services.debate.deployment import DebateDeployment
    from services.gateway.deployment import GatewayDeployment
    from services.scheduler.deployment import SchedulerDeployment
    from services.student.deployment import StudentDeployment

    base_id = base_model_id(model_path)
    # Admission control happens in the gateway (429); Serve's own queue limits sit above it.
    ongoing = settings.server.max_concurrent_requests + 8
    student = StudentDeployment.options(
        ray_actor_options={"num_cpus": settings.student.num_cpus, "num_gpus": settings.student.num_gpus},
        max_ongoing_requests=ongoing,
        health_check_period_s=10,
        health_check_timeout_s=60,
        **settings.student.replicas.serve_options(),
    ).bind(settings, model_path, base_id)
    debate = None
    if settings.debate.enabled and settings.capture.enabled:
        debate = DebateDeployment.options(
            ray_actor_options={"num_cpus": 0}, **settings.debate.replicas.serve_options()
        ).bind(student, settings, model_path, teachers_url(settings))
    # The scheduler only starts training jobs (which reserve their own CPUs) and watches promotions.
    scheduler = SchedulerDeployment.options(ray_actor_options={"num_cpus": 0}).bind(settings, model_path, base_id)
    return GatewayDeployment.options(
        ray_actor_options={"num_cpus": 0}, max_ongoing_requests=ongoing, **settings.server.replicas.serve_options()
    ).bind(student, debate, scheduler, settings, model_path, base_id)


def build_teachers_application(settings: Settings) -> Any | None:
    from services.teachers.deployment import ReferenceTeachersDeployment

    builtin = [t for t in settings.debate.teachers if t.builtin]
    if not (settings.debate.enabled and builtin):
        return None
    return ReferenceTeachersDeployment.options(ray_actor_options={"num_cpus": 0}).bind(
        builtin, teachers_token(settings), settings.server.max_body_bytes
    )


def offline_env(settings: Settings) -> dict[str, str]:
    """Nothing may reach a model hub. Replicas of a local Ray inherit the environment of the process that starts it;
    on a cluster it joins, they get these through the job's runtime environment (returned)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(settings.student.kv_cache_gb))
    names = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "VLLM_NO_USAGE_STATS", "VLLM_CPU_KVCACHE_SPACE")
    return {name: os.environ[name] for name in names}


def serve_app(args: dict[str, Any] | None = None) -> Any:
    """Application builder for a Serve config file or a KubeRay RayService (`import_path:
    services.launcher:serve_app`, see helm/distillery). Settings come from the pods' `DISTILLERY_CONFIG` and
    `DISTILLERY_*` environment, as for `distillery serve`; the cluster, not this process, owns Ray and HTTP."""
    settings = Settings()
    check_exposure(settings.server)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    offline_env(settings)
    check_shared_state(settings, alive_nodes())
    return build_application(settings, resolve_base_model(settings, log.info))


def teachers_app(args: dict[str, Any] | None = None) -> Any:
    """Builder of the built-in reference teachers' application (`import_path: services.launcher:teachers_app`)."""
    app = build_teachers_application(Settings())
    if app is None:
        raise ValueError("no built-in reference teachers are configured: drop the `teachers` Serve application")
    return app


class _Ticker:
    """Prints elapsed time while a long step runs, so `make run` never looks hung."""

    def __init__(self, progress: Progress, what: str, every: float = 10.0) -> None:
        self.progress, self.what, self.every = progress, what, every
        self._stop = threading.Event()
        self._t0 = time.monotonic()

    def __enter__(self) -> _Ticker:
        self.progress(f"{self.what} ...")
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.progress(f"  {self.what}: {time.monotonic() - self._t0:.0f}s")

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if exc[0] is None:
            self.progress(f"{self.what}: done in {time.monotonic() - self._t0:.1f}s")


def start(settings: Settings, progress: Progress = print) -> str:
    """Deploy the application; returns once it answers. The caller owns shutdown (`stop`). Refuses
    (UnsafeExposure) an exposed address without keys, before anything starts."""
    check_exposure(settings.server)
    import ray
    from ray import serve

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    model_path = resolve_base_model(settings, progress)
    env = offline_env(settings)
    address = cluster_address(settings)
    local: dict[str, Any] = {} if address else {
        "num_cpus": settings.ray.num_cpus or os.cpu_count(), "include_dashboard": False,
        "object_store_memory": 256 * 1024**2}
    with _Ticker(progress, f"joining the Ray cluster at {address}" if address else "starting Ray"):
        ray.init(
            address=address or "local",
            namespace=settings.ray.namespace,
            log_to_driver=os.environ.get("DISTILLERY_RAY_LOG_TO_DRIVER", "0") == "1",
            runtime_env={"env_vars": env},
            **local,
        )
        try:
            check_shared_state(settings, alive_nodes())
        except StateNotShared:
            ray.shutdown()
            raise
        # Training jobs started from the CLI (`distillery train --once`) join this cluster through this file.
        ray_address_file(settings).write_text(ray.get_runtime_context().gcs_address)
        serve.start(
            proxy_location=settings.server.proxy_location,
            http_options={
                "host": settings.server.host,
                "port": settings.server.port,
                "request_timeout_s": settings.server.request_timeout_s,
            },
        )
    teachers = build_teachers_application(settings)
    if teachers is not None:
        with _Ticker(progress, "starting the built-in reference teachers"):
            serve.run(teachers, name="teachers", route_prefix="/teachers", blocking=False)
    with _Ticker(progress, f"starting the student engine (vLLM) on {model_path}"):
        serve.run(build_application(settings, model_path), name=APP_NAME, route_prefix="/", blocking=False)
    url = f"http://{settings.server.host}:{settings.server.port}"
    progress(f"Distillery is serving on {url}  (model `{settings.student.served_name}`, OpenAI API at {url}/v1)")
    return url


def stop() -> None:
    import ray
    from ray import serve

    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def serve_forever(settings: Settings, progress: Progress = print) -> None:
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    start(settings, progress)
    try:
        done.wait()
    finally:
        progress("shutting down")
        stop()
