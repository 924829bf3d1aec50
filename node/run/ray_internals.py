"""The private Ray APIs the ``ray`` executor uses, checked when a driver or the probe starts.

Ray promises nothing about ``ray._private``, ``ray._raylet`` or its generated gRPC stubs from one
release to the next; a rename would otherwise surface as a probe that refuses every cluster or a
driver that never lets an idle actor go. Like ``node.receive.pynetdicom_internals``, each use is
declared here with the shape it relies on, and a difference is named with what to do. Runs only
where Ray is imported (drivers, probe), reading attributes and signatures.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

#: What each use serves, as the message names it.
PROBE = "node/run/ray_probe.py (whether the cluster accepts this node)"
CLIENT = "node/run/ray_probe.py (Ray Client's ping, for address = \"ray://...\")"
RELEASE = "node/run/ray_executor.py (idle actors released for one that waits)"
REQUIREMENT = "ray>=2.52,<3"


@dataclass(frozen=True)
class Use:
    """One private Ray function or class the node calls, and the shape it must have."""

    name: str
    get: Callable[[], Any]
    #: the parameters the node passes by name or position
    params: tuple[str, ...]
    used_by: str


@dataclass(frozen=True)
class Mismatch:
    expected: str
    found: str
    used_by: str


class RayMismatch(RuntimeError):
    """The installed Ray lacks a private API the node uses, in the shape it was written for."""

    def __init__(self, version: str, mismatches: list[Mismatch]) -> None:
        self.mismatches = mismatches
        found = "; ".join(f"expected {m.expected}, found {m.found} ({m.used_by})" for m in mismatches)
        super().__init__(f"Ray {version} differs from the private APIs radnode uses: {found}. "
                         f"Install {REQUIREMENT} as pyproject.toml pins, or update {_files(mismatches)} "
                         "and node/run/ray_internals.py for the new Ray")


def _files(mismatches: list[Mismatch]) -> str:
    return ", ".join(sorted({m.used_by.split(" ", 1)[0] for m in mismatches}))


def _attr(module: str, *path: str) -> Callable[[], Any]:
    def get() -> Any:
        found: Any = importlib.import_module(module)
        for name in path:
            found = getattr(found, name)
        return found
    return get


USES: tuple[Use, ...] = (
    Use("ray._private.state.actors", _attr("ray._private.state", "actors"), ("actor_state_name",), RELEASE),
    Use("ray.actor.ActorHandle._actor_id", _attr("ray.actor", "ActorHandle", "_actor_id"), (), RELEASE),
    Use("ray._raylet.InnerGcsClient.standalone", _attr("ray._raylet", "InnerGcsClient", "standalone"),
        ("gcs_address", "cluster_id", "timeout_ms"), PROBE),
    Use("ray._raylet.InnerGcsClient.internal_kv_get", _attr("ray._raylet", "InnerGcsClient", "internal_kv_get"),
        (), PROBE),
    Use("ray._private.grpc_utils.init_grpc_channel", _attr("ray._private.grpc_utils", "init_grpc_channel"),
        ("address",), CLIENT),
    Use("ray.core.generated.ray_client_pb2.ClusterInfoRequest",
        _attr("ray.core.generated.ray_client_pb2", "ClusterInfoRequest"), (), CLIENT),
    Use("ray.core.generated.ray_client_pb2.ClusterInfoType.PING",
        _attr("ray.core.generated.ray_client_pb2", "ClusterInfoType", "PING"), (), CLIENT),
    Use("ray.core.generated.ray_client_pb2_grpc.RayletDriverStub",
        _attr("ray.core.generated.ray_client_pb2_grpc", "RayletDriverStub"), (), CLIENT),
)


def mismatches(used_by: str | None = None) -> list[Mismatch]:
    """Every declared use (or those of ``used_by``) that the installed Ray does not fit."""
    return [m for use in USES if used_by in (None, use.used_by) for m in _check(use)]


def _check(use: Use) -> list[Mismatch]:
    try:
        found = use.get()
    except (ImportError, AttributeError) as error:
        return [Mismatch(_shape(use), f"none ({type(error).__name__}: {error})", use.used_by)]
    if not use.params:
        return []
    try:
        params = tuple(inspect.signature(found).parameters)
    except (TypeError, ValueError):  # a compiled function that states none
        params = ()
    if all(p in params for p in use.params):
        return []
    return [Mismatch(_shape(use), f"parameters ({', '.join(params)})", use.used_by)]


def _shape(use: Use) -> str:
    return f"{use.name}({', '.join(use.params)})" if use.params else use.name


def require(*used_by: str) -> None:
    """Raise RayMismatch, naming each difference, unless every use of ``used_by`` fits."""
    found = [m for use in used_by for m in mismatches(use)]
    if found:
        import ray
        raise RayMismatch(str(getattr(ray, "__version__", "unknown")), found)
