"""The code's shape, read from the source with ``ast``: short docstrings, short functions, tests
named as sentences (issue 70, the standards in ARCHITECTURE.md).

A docstring says what and why in a few lines; measurements and experiment narratives belong in
docs/ or in a bench's output, where they can be rerun. Nothing is imported, no peer or data is
needed, so these run in the fast loop.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
#: The shipped code; training/ (experiments, whose code keeps its own notes) is outside both.
PACKAGES = ("node", "pipelines")

MODULE_DOC_LINES = 10
DOC_LINES = 6  # a function's or a class's docstring, and a block of `#:` comments on a constant
FUNCTION_LINES = 60  # in node/, from `def` to the last line, docstring included
#: A test's name is a sentence: at least a subject, a verb and what it acts on.
TEST_NAME_WORDS = 3

Definition = ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef


def sources(packages: tuple[str, ...] = PACKAGES) -> Iterator[Path]:
    for package in packages:
        yield from sorted((REPO / package).rglob("*.py"))


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(REPO) if path.is_relative_to(REPO) else path}:{line}"


def definitions(tree: ast.Module) -> Iterator[Definition]:
    yield tree
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def long_docstrings(path: Path) -> Iterator[str]:
    for node in definitions(ast.parse(path.read_text())):
        doc = ast.get_docstring(node)
        if doc is None:
            continue
        limit = MODULE_DOC_LINES if isinstance(node, ast.Module) else DOC_LINES
        lines = len(inspect.cleandoc(doc).splitlines())
        if lines > limit:
            name = getattr(node, "name", "module docstring")
            yield f"{where(path, getattr(node, 'lineno', 1))} {name}: {lines} lines (limit {limit})"


def long_constant_comments(path: Path) -> Iterator[str]:
    run, start = 0, 0
    for number, line in enumerate([*path.read_text().splitlines(), ""], start=1):
        if line.lstrip().startswith("#:"):
            run, start = run + 1, start if run else number
            continue
        if run > DOC_LINES:
            yield f"{where(path, start)} `#:` comment: {run} lines (limit {DOC_LINES})"
        run = 0


def long_functions(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > FUNCTION_LINES:
                yield f"{where(path, node.lineno)} {node.name}: {lines} lines (limit {FUNCTION_LINES})"


def test_every_docstring_says_what_and_why_in_a_few_lines():
    offenders = [found for path in sources() for found in long_docstrings(path)]
    assert not offenders, "trim to what and why; measurements go to docs/:\n" + "\n".join(offenders)


def test_every_comment_on_a_constant_is_a_few_lines():
    offenders = [found for path in sources() for found in long_constant_comments(path)]
    assert not offenders, "trim to what and why; measurements go to docs/:\n" + "\n".join(offenders)


def test_no_function_in_the_node_runs_over_sixty_lines():
    offenders = [found for path in sources(("node",)) for found in long_functions(path)]
    assert not offenders, "split into functions named for their steps:\n" + "\n".join(offenders)


def test_every_test_is_named_as_a_sentence():
    offenders = [
        where(path, node.lineno) + f" {node.name}"
        for path in sorted((REPO / "tests").rglob("test_*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and len(node.name.removeprefix("test_").split("_")) < TEST_NAME_WORDS
    ]
    assert not offenders, "name each test for the behaviour it asserts:\n" + "\n".join(offenders)


def test_the_checks_find_what_they_look_for(tmp_path):
    sample = tmp_path / "sample.py"
    long_doc = "\n".join(f"line {n}" for n in range(DOC_LINES + 1))
    comment = "".join(f"#: note {n}\n" for n in range(DOC_LINES + 1))
    body = "".join("    x = 1\n" for _ in range(FUNCTION_LINES))
    sample.write_text(f'{comment}X = 1\n\n\ndef f():\n    """{long_doc}"""\n{body}')
    assert len(list(long_docstrings(sample))) == 1
    assert len(list(long_constant_comments(sample))) == 1
    assert len(list(long_functions(sample))) == 1
