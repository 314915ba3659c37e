"""The Ray cluster Distillery runs on: which one to join, and whether its state is shared enough for it.

`distillery serve`, `train --once` and `experiment` join an existing cluster when `ray.address` (or `RAY_ADDRESS`)
names one; the embedded default starts a local one. A service whose cluster has more than one node keeps its state
where every node sees it: the store in Postgres (a SQLite file lives on one node) and adapter versions in an object
store (`storage.adapters_url`) or on a volume every node mounts (`storage.shared_volume`). Otherwise it refuses to
start, saying what to set.
"""

from __future__ import annotations

import os

from services.config import Settings


class StateNotShared(ValueError):
    """Multi-node on node-local state."""


def cluster_address(settings: Settings) -> str | None:
    """The cluster to join: `ray.address`, else `RAY_ADDRESS`; None starts a local one."""
    return settings.ray.address or os.environ.get("RAY_ADDRESS") or None


def alive_nodes() -> int:
    """Nodes of the connected cluster; 1 when this process is not connected to one (a builder run outside Ray)."""
    import ray

    if not ray.is_initialized():
        return 1
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def check_shared_state(settings: Settings, nodes: int) -> None:
    """StateNotShared when a cluster of `nodes` nodes would leave part of the state on one node."""
    if nodes <= 1:
        return
    problems = []
    if settings.db_url.startswith("sqlite"):
        problems.append("the store is SQLite, a file on one node: set `database_url` "
                        "(DISTILLERY_DATABASE_URL) to a Postgres URL")
    if settings.storage.adapters_url is None and not settings.storage.shared_volume:
        problems.append(f"adapter versions are folders under {settings.adapters_dir}, on one node: set "
                        "`storage.adapters_url` (s3://bucket/prefix), or `storage.shared_volume: true` if the data "
                        "dir is a volume every node mounts")
    if problems:
        raise StateNotShared(f"the Ray cluster has {nodes} nodes but " + "; and ".join(problems))


def replica_identity() -> tuple[str, str]:
    """(Ray Serve replica id, Ray node id) of the calling replica; `local` for either outside Serve or Ray."""
    import ray
    from ray import serve

    try:
        replica = serve.get_replica_context().replica_id.unique_id
    except Exception:  # outside a Serve replica (a test driving a deployment's class directly)
        replica = "local"
    return replica, ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
