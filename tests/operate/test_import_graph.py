"""The import graph of node/, pipelines/ and training/: no module imports itself round a circle, and the
node's stages depend only on the stages before them (ARCHITECTURE.md).

Every import counts: at the top of a module, inside a function, and under ``TYPE_CHECKING``,
because a circle hidden in a function is still a circle a reader has to untangle. The graph is
read from the source with ``ast``, so nothing is imported and no peer or data is needed.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("node", "pipelines", "training")

#: The node's stage packages, each allowed to import only the stages listed before it. The index
#: comes first because every stage records its work there; the DICOM networking that receiving and
#: delivering share (dicomnet: the pynetdicom patches) comes next; receiving, completing, routing,
#: running and delivering follow the data, retrieving from a PACS (backfills) sends with the
#: delivering stage's associations; operating (service, CLI, web) wires them all together.
STAGES = ("index", "dicomnet", "receive", "route", "complete", "deliver", "retrieve", "run", "operate")
#: Modules at node/'s top level that every stage shares; they import no stage, except that
#: config.toml's route conditions are parsed by the routing stage's condition language.
SHARED = ("config", "logs", "tls", "http_auth", "passwords", "isolation", "result_formats", "health")
SHARED_MAY_IMPORT = {("config", "route.matcher")}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}


def imported(name: str, path: Path, known: set[str]) -> Iterator[str]:
    """The project modules ``name`` imports, anywhere in its source."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                yield target


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: set(imported(name, path, set(found))) for name, path in found.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_module_of_node_or_pipelines_imports_itself_round_a_circle() -> None:
    edges = graph()
    assert len(edges) > 80, "the graph reader found too few modules to judge"
    assert cycles(edges) == []


def test_the_cycle_finder_sees_a_circle_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def where(name: str) -> str | None:
    """The stage or shared module a node module belongs to; None outside node/."""
    parts = name.split(".")
    if parts[0] != "node" or len(parts) < 2:
        return None
    return parts[1]


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_imports_only_the_shared_modules_and_the_stages_before_it(stage: str) -> None:
    allowed = set(SHARED) | set(STAGES[: STAGES.index(stage) + 1])
    wrong = sorted(f"{name} -> {target}" for name, targets in graph().items() if where(name) == stage
                   for target in targets if where(target) not in allowed | {None})
    assert (REPO / "node" / stage / "__init__.py").is_file()
    assert wrong == []


def test_the_shared_modules_import_no_stage() -> None:
    wrong = sorted(f"{name} -> {target}" for name, targets in graph().items() if where(name) in SHARED
                   for target in targets if where(target) in STAGES
                   and (name.removeprefix("node."), target.removeprefix("node.")) not in SHARED_MAY_IMPORT)
    assert wrong == []


def test_deliver_imports_nothing_of_receive() -> None:
    """What both sides of the DICOM network need lives in node.dicomnet, not in receive/."""
    wrong = sorted(f"{name} -> {target}" for name, targets in graph().items() if where(name) == "deliver"
                   for target in targets if where(target) == "receive")
    assert wrong == []


def test_node_has_no_module_outside_a_stage_or_the_shared_list() -> None:
    loose = sorted(p.stem for p in (REPO / "node").glob("*.py") if p.stem not in {"__init__", *SHARED})
    assert loose == []


#: The index and executor calls that schedule: claiming a job, finding the overdue ones, handing
#: an attempt to the executor or taking it back. Only ``node.run.scheduler`` makes them.
SCHEDULING_CALLS = {"claim_job", "overdue_jobs", "has_room", "submit", "cancel"}


def called_names(path: Path) -> set[str]:
    """The names of the functions and methods a module calls (``a.b.claim_job()`` -> claim_job)."""
    tree = ast.parse(path.read_text(), str(path))
    return {call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id
            for call in ast.walk(tree) if isinstance(call, ast.Call)
            and isinstance(call.func, (ast.Attribute, ast.Name))}


def test_operate_only_wires_the_scheduler_and_run_imports_nothing_of_deliver() -> None:
    edges = graph()
    assert "node.run.scheduler" in edges["node.operate.service"]
    scheduling = {name: sorted(called_names(path) & SCHEDULING_CALLS) for name, path in modules().items()
                  if where(name) == "operate"}
    assert {name: calls for name, calls in scheduling.items() if calls} == {}
    assert SCHEDULING_CALLS <= called_names(modules()["node.run.scheduler"])
    from_run = sorted(f"{name} -> {target}" for name, targets in edges.items() if where(name) == "run"
                      for target in targets if where(target) == "deliver")
    assert from_run == []
