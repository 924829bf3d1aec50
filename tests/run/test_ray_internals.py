"""The check of the private Ray APIs the ``ray`` executor uses (node.run.ray_internals): the
installed Ray passes it; one that is gone or takes other parameters is named with what to do,
the probe says so on /health instead of refusing every cluster for an unclear reason, and a
driver keeps running without the idle-actor release. Fast: no cluster, no data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")

import ray._private.grpc_utils  # noqa: E402
import ray._private.state  # noqa: E402

from node.run import ray_probe  # noqa: E402
from node.run.ray_internals import CLIENT, PROBE, RELEASE, RayMismatch, mismatches, require  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_probe_check() -> Iterator[None]:
    """The probe checks once per process: each test starts and ends with no verdict cached."""
    ray_probe._internals_mismatch.cache_clear()
    yield
    ray_probe._internals_mismatch.cache_clear()


def test_the_installed_ray_has_every_private_api_the_node_uses_in_the_shape_it_calls() -> None:
    assert mismatches() == []
    require(PROBE, CLIENT, RELEASE)


def test_a_private_ray_function_that_is_gone_is_named_with_the_module_that_needs_it_and_what_to_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(ray._private.state, "actors")
    with pytest.raises(RayMismatch) as caught:
        require(RELEASE)
    message = str(caught.value)
    assert f"Ray {ray.__version__} differs from the private APIs radnode uses" in message
    assert "expected ray._private.state.actors(actor_state_name), found none (AttributeError" in message
    assert "Install ray>=2.52,<3 as pyproject.toml pins, or update node/run/ray_executor.py" in message
    require(PROBE, CLIENT)  # the other uses still fit: only the release is off


def test_a_private_ray_function_with_other_parameters_is_named_with_the_parameters_found(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray._private.grpc_utils, "init_grpc_channel", lambda target, secure=False: None)
    [found] = mismatches()
    assert (found.expected, found.found) == ("ray._private.grpc_utils.init_grpc_channel(address)",
                                             "parameters (target, secure)")
    require(PROBE)  # only a Ray Client address uses it


def test_the_probe_reports_a_changed_ray_as_its_verdict_for_health_without_asking_the_cluster(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from node.config import RaySettings

    monkeypatch.setattr(ray._private.grpc_utils, "init_grpc_channel", lambda target: None)
    verdict = ray_probe.probe(RaySettings(address="ray://127.0.0.1:1"))
    assert not verdict.ok and "init_grpc_channel(address), found parameters (target)" in verdict.detail
    assert "node/run/ray_probe.py" in verdict.detail
    ray_probe._internals_mismatch.cache_clear()
    verdict = ray_probe.probe(RaySettings(address="127.0.0.1:1"))  # a GCS address: the check passes
    assert "does not answer" in verdict.detail


def test_a_driver_on_a_ray_without_the_actor_table_keeps_its_actors_and_says_why_once(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from node.config import parse_config
    from node.index.store import Index
    from node.receive.spool import Spool
    from node.run.ray_executor import Driver
    from tests.support.harness import node_config

    monkeypatch.delattr(ray._private.state, "actors")
    config = parse_config(node_config(tmp_path))
    driver = Driver(config, Index(config.node.index_path), Spool(config.node.spool), "radnode-host",
                    stop=None)  # type: ignore[arg-type]
    assert not driver._release_fits() and not driver._release_fits()
    assert [r.getMessage() for r in caplog.records].count("ray.release_unavailable") == 1
