"""Only lifecycle.py writes a run's or a workflow run's state, as the README's "How it works"
says; an alert's and a notification's have their own one home each (alerts.py, notifications.py). (The import
layering, models knowing no infrastructure included, is `lint-imports`, run by the test
command beside ruff: contracts in pyproject.toml.)"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "tasks_app"
# The modules that may write a `state` column, each of its own models; migrations are history.
MOVERS = {APP / "lifecycle.py", APP / "alerts.py", APP / "notifications.py"}
WRITES = {"update", "create", "bulk_create", "get_or_create", "update_or_create", "Run", "WorkflowRun"}


def modules() -> list[Path]:
    return sorted(p for p in APP.rglob("*.py") if "migrations" not in p.parts and p not in MOVERS)


def state_writes(tree: ast.AST) -> list[int]:
    """Lines that write a `state`: `x.state = ...`, `state=` given to an update, create or a
    model's constructor, or "state" among a save's update_fields or a bulk_update's fields."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                for element in target.elts if isinstance(target, ast.Tuple) else [target]:
                    if isinstance(element, ast.Attribute) and element.attr == "state":
                        lines.append(node.lineno)
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            keywords = {keyword.arg for keyword in node.keywords}
            if name in WRITES and "state" in keywords:
                lines.append(node.lineno)
            listed = [k.value for k in node.keywords if k.arg == "update_fields"]
            if name == "bulk_update" and len(node.args) > 1:
                listed.append(node.args[1])
            for value in listed:
                if any(isinstance(c, ast.Constant) and c.value == "state" for c in ast.walk(value)):
                    lines.append(node.lineno)
    return lines


def test_only_lifecycle_writes_a_state() -> None:
    found = {
        f"{path.relative_to(APP)}:{line}"
        for path in modules()
        for line in state_writes(ast.parse(path.read_text(), str(path)))
    }
    assert found == set()


@pytest.mark.parametrize(
    "source",
    [
        "run.state = 'failed'",
        "run.state, run.finished_at = 'failed', now",
        "Run.objects.filter(pk=1).update(state='failed')",
        "WorkflowRun.objects.create(workflow=w, state='running')",
        "Run(task=t, state='pending')",
        "run.save(update_fields=['state', 'finished_at'])",
        "Run.objects.bulk_update(runs, ['state'])",
    ],
)
def test_the_check_sees_each_way_of_writing_a_state(source: str) -> None:
    assert state_writes(ast.parse(source)) == [1]


def test_the_check_lets_reads_and_filters_pass() -> None:
    source = "Run.objects.filter(state='failed').update(due_at=None); x = run.state; f(state=s)"
    assert state_writes(ast.parse(source)) == []
