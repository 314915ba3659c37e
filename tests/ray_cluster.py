"""A real multi-node Ray cluster on this machine: a head and more raylets, each started with `ray start --block` as
its own process group with its own CPUs and ports, so that one node can be stopped (its raylet, agents, workers and
their vLLM engine processes killed at once, as a lost machine) and started again.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from tests.conftest import free_port

RAY = str(Path(sys.executable).parent / "ray")
OBJECT_STORE_BYTES = 256 * 1024**2


@dataclass
class RayNode:
    name: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int

    def stop(self) -> None:
        """Kill the node's every process at once (a lost machine, not a drained one): its process group, and every
        descendant that left it (vLLM starts its engine processes in sessions of their own)."""
        if self.proc.poll() is not None:
            return
        try:
            descendants = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            descendants = []
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for p in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        self.proc.wait(timeout=30)

    def log_tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])


@dataclass
class RayCluster:
    address: str  # the head's GCS, host:port
    workdir: Path
    env: dict[str, str]
    nodes: list[RayNode] = field(default_factory=list)
    # Each node's own temporary root, short (Unix socket paths are limited) and apart from /tmp/ray, so nothing of
    # this cluster is taken for the machine's default one (`ray.init("auto")` elsewhere).
    tmp: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="drc-", dir="/tmp"))

    def add_node(self, name: str, num_cpus: int, *, head: bool = False) -> RayNode:
        metrics_port = free_port()
        args = [RAY, "start", "--block", f"--num-cpus={num_cpus}", "--num-gpus=0", "--node-ip-address=127.0.0.1",
                "--disable-usage-stats", f"--object-store-memory={OBJECT_STORE_BYTES}",
                f"--metrics-export-port={metrics_port}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--temp-dir={self.tmp}/{name}"]
        if head:
            args += ["--head", f"--port={self.address.rsplit(':', 1)[1]}", "--include-dashboard=false",
                     f"--ray-client-server-port={free_port()}"]
        else:
            args += [f"--address={self.address}"]
        log_path = self.workdir / f"{name}.log"
        with log_path.open("a") as log:
            proc = subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        node = RayNode(name, proc, log_path, metrics_port)
        self.nodes.append(node)
        return node

    def alive_nodes(self) -> int:
        out = subprocess.run(
            [sys.executable, "-c", f"import ray; ray.init(address={self.address!r}, logging_level='ERROR', "
             "log_to_driver=False); print(sum(1 for n in ray.nodes() if n['Alive']))"],
            env=self.env, capture_output=True, text=True, timeout=120)
        return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0

    def wait_nodes(self, n: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while (alive := self.alive_nodes()) != n:
            for node in self.nodes:
                assert node.proc.poll() is None or node.name != "head", f"the head exited:\n{node.log_tail()}"
            assert time.monotonic() < deadline, f"{alive} Ray nodes alive after {timeout}s, wanted {n}"
            time.sleep(2)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def start_cluster(workdir: Path, env: dict[str, str], cpus: list[int]) -> RayCluster:
    """A head with `cpus[0]` CPUs and one more node per further entry; returns once all have joined."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = RayCluster(f"127.0.0.1:{free_port()}", workdir, env)
    try:
        cluster.add_node("head", cpus[0], head=True)
        cluster.wait_nodes(1)  # the head up first: it writes the cluster's auth token the others present
        for i, n in enumerate(cpus[1:], start=2):
            cluster.add_node(f"node{i}", n)
        cluster.wait_nodes(len(cpus))
    except BaseException:
        cluster.stop()
        raise
    return cluster
