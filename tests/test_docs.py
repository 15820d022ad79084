"""The reference in docs/ stays true to the code: every path of the URL configuration is
written there, no API path is written there that the URL configuration lacks, and the tables
of states and moves in docs/states.md are the ones of choices.py and lifecycle.py."""

from __future__ import annotations

import re
from pathlib import Path

from django.contrib.admindocs.views import extract_views_from_urlpatterns, simplify_regex
from django.urls import get_resolver

from tasks_app.choices import TERMINAL_STATES, WORKFLOW_TERMINAL_STATES, RunState, WorkflowState
from tasks_app.lifecycle import TRANSITIONS, WORKFLOW_TRANSITIONS

DOCS = Path(__file__).resolve().parent.parent / "docs"
OUTSIDE_API = {"/admin/", "/api/schema/", "/api/docs/", "/healthz", "/readyz", "/metrics"}
# Characters that continue a path: a documented path must not be only the start of a longer one.
PATH_CHAR = r"[\w{}./-]"
API_PATH = re.compile(r"/api/v1/[\w{}./-]*")


def as_written(path: str) -> str:
    """A path as the docs write it: DRF captures a detail's lookup as `pk` unless the viewset
    names a lookup_field (tasks and workflows `name`, workers `hostname`); `pk` is `{id}`."""
    return re.sub(r"<(\w+)>", lambda match: "{" + {"pk": "id"}.get(match[1], match[1]) + "}", path)


def url_paths() -> set[str]:
    """Every path the project answers, as the docs write it; the admin's pages as `/admin/`
    (Django's to document), without the format-suffix variants (`runs.json`)."""
    paths = set()
    for _view, regex, _namespace, _name in extract_views_from_urlpatterns(get_resolver().url_patterns):
        path = simplify_regex(regex)
        if path.startswith("/admin/"):
            paths.add("/admin/")
        elif "format>" not in path:
            paths.add(as_written(path))
    return paths


def docs_text() -> str:
    pages = sorted(DOCS.glob("**/*.md"))
    assert pages, f"no reference pages in {DOCS}"
    return "\n".join(page.read_text(encoding="utf-8") for page in pages)


def is_written(path: str, text: str) -> bool:
    return re.search(f"(?<!{PATH_CHAR}){re.escape(path)}(?!{PATH_CHAR})", text) is not None


def names_a_path(written: str, path: str) -> bool:
    """Whether `written` (from the docs) is `path`, or `path` with a value in a placeholder."""
    ours, theirs = written.split("/"), path.split("/")
    return len(ours) == len(theirs) and all(
        mine == part or (part.startswith("{") and mine and "{" not in mine)
        for mine, part in zip(ours, theirs, strict=True)
    )


def table_under(heading: str, page: str = "states.md") -> list[dict[str, str]]:
    """The rows of the first table after `heading` in `page`, by column name, without backticks."""
    lines = (DOCS / page).read_text(encoding="utf-8").splitlines()
    assert heading in lines, f"docs/{page} has no heading {heading!r}"
    rows: list[list[str]] = []
    for line in lines[lines.index(heading) + 1 :]:
        if line.startswith("|"):
            rows.append([cell.strip().strip("`") for cell in line.strip().strip("|").split("|")])
        elif rows or line.startswith("#"):
            break
    assert len(rows) > 2, f"no table under {heading!r} in docs/{page}"
    header, _rule, *body = rows
    return [dict(zip(header, row, strict=True)) for row in body]


def moves_in(rows: list[dict[str, str]]) -> list[tuple[str, str]]:
    return [(row["from"], row["to"]) for row in rows]


def moves_of(table: dict) -> set[tuple[str, str]]:
    return {(source.value, target.value) for source, targets in table.items() for target in targets}


# --- paths ---------------------------------------------------------------------------


def test_the_url_conf_is_read_whole() -> None:
    paths = url_paths()
    assert paths >= OUTSIDE_API
    assert {"/api/v1/", "/api/v1/runs/{id}/cancel/", "/api/v1/tasks/{name}/"} <= paths
    assert not any(".json" in path or "{format}" in path for path in paths)


def test_every_path_of_the_url_conf_is_in_the_docs() -> None:
    text = docs_text()
    missing = sorted(path for path in url_paths() if not is_written(path, text))
    assert not missing, f"paths of the URL conf that docs/ does not mention: {missing}"


def test_the_docs_name_no_api_path_the_url_conf_lacks() -> None:
    paths = url_paths()
    written = {match.rstrip(".") for match in API_PATH.findall(docs_text())}
    unknown = sorted(w for w in written if not any(names_a_path(w, path) for path in paths))
    assert not unknown, f"docs/ names API paths the URL conf does not have: {unknown}"


# --- states and moves ----------------------------------------------------------------


def test_the_run_states_table_lists_every_state_and_which_are_final() -> None:
    rows = table_under("## Run states")
    assert sorted(row["state"] for row in rows) == sorted(RunState.values)
    assert {row["state"] for row in rows if row["final"] == "yes"} == set(TERMINAL_STATES)
    assert {row["final"] for row in rows} <= {"yes", "no"}


def test_the_run_moves_table_is_lifecycle_transitions() -> None:
    written = moves_in(table_under("## Legal moves of a run"))
    assert len(written) == len(set(written)), "a move is written twice"
    expected = moves_of(TRANSITIONS)
    assert set(written) == expected, (
        f"missing from docs/states.md: {sorted(expected - set(written))}; "
        f"not legal in lifecycle.TRANSITIONS: {sorted(set(written) - expected)}"
    )


def test_the_workflow_run_tables_are_the_code_s() -> None:
    states = table_under("## Workflow run states")
    assert sorted(row["state"] for row in states) == sorted(WorkflowState.values)
    assert {row["state"] for row in states if row["final"] == "yes"} == set(WORKFLOW_TERMINAL_STATES)
    written = moves_in(table_under("## Legal moves of a workflow run"))
    assert len(written) == len(set(written)), "a move is written twice"
    assert set(written) == moves_of(WORKFLOW_TRANSITIONS)
