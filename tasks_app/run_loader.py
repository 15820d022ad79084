"""The worker's read of a run with its task, without compiling a query each time; and the
run as its message carries it, which spares the worker that read.

`Run.objects.select_related("task").get(pk=pk)` compiles its SQL on every call; a no-op
run spends a large part of its CPU there. This builds the same SELECT once per connection
and converts values with the converters the ORM applies. bench/orm.py on MariaDB
(2026-12-02): 688 us a load here against 1,828 us for the ORM's, 2.7x.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Any

from django.core import signing
from django.db import connections
from django.db.models import DateTimeField, Model

from tasks_app.models import Run, Task


class _RunWithTaskLoader:
    def __init__(self, connection: Any) -> None:
        quote = connection.ops.quote_name
        self.connection = connection
        self.parts = []
        columns = []
        for model, alias in ((Run, "r"), (Task, "t")):
            fields = model._meta.concrete_fields
            converters = [
                connection.ops.get_db_converters(field.get_col(model._meta.db_table))
                + field.get_db_converters(connection)
                for field in fields
            ]
            self.parts.append(
                (model, [f.attname for f in fields], list(zip(fields, converters, strict=True)))
            )
            columns += [f"{alias}.{quote(f.column)}" for f in fields]
        self.sql = (
            f"SELECT {', '.join(columns)} FROM {quote(Run._meta.db_table)} r "
            f"JOIN {quote(Task._meta.db_table)} t ON t.id = r.task_id WHERE r.id = %s"
        )

    def get(self, pk: int) -> Run:
        with self.connection.cursor() as cursor:
            cursor.execute(self.sql, [pk])
            row = cursor.fetchone()
        if row is None:
            raise Run.DoesNotExist(f"run {pk} does not exist")
        instances, start = [], 0
        for model, attnames, converters in self.parts:
            values = []
            for (model_field, field_converters), value in zip(converters, row[start:], strict=False):
                for convert in field_converters:
                    value = convert(value, model_field, self.connection)
                values.append(value)
            instances.append(model.from_db(self.connection.alias, attnames, values))
            start += len(attnames)
        run, task = instances
        run.task = task
        return run


_loaders: dict[str, _RunWithTaskLoader] = {}


def get_with_task(pk: int, using: str = "default") -> Run:
    """select_related("task").get(pk=pk), for the worker's hot path."""
    connection = connections[using]
    loader = _loaders.get(connection.alias)
    if loader is None:
        loader = _loaders[connection.alias] = _RunWithTaskLoader(connection)
    return loader.get(pk)


# --- a run as its message carries it --------------------------------------------------
#
# A run's inputs never change after submission, and the rest of it stands still while it waits
# in `pending` under one message number: every path that gives it that number holds the row as
# it is then (just inserted, or read back under the row lock: lifecycle.move, send_due). So a
# message carries the run, and the definition of its task as it was when sent, and the worker
# skips its read. The claim (that run still pending under that number) stays the authority on
# whether the message runs. bench/e2e.py (2026-12-04): the read was 15 % of a pool process's
# CPU for a no-op run.
#
# It travels signed (django.core.signing, SECRET_KEY): one who can write to the broker cannot
# make a worker run a handler, or inputs, that no one submitted; a message whose signature does
# not hold is executed from the database, as one that carries nothing. Signed, it is also one
# opaque string to kombu, whose decoder would turn a user's {"__type__": ...} into an object.

# What the worker and the after-move hook read of a task; any other field loads when read.
TASK_FIELDS = (
    "id", "name", "handler", "queue", "priority", "max_retries", "retry_backoff", "retry_backoff_max",
    "retry_jitter", "soft_time_limit", "time_limit", "concurrency_policy", "enabled",
)  # fmt: skip
# The claim resets these (a failed run sent again would carry its traceback): not carried.
_RESET_BY_THE_CLAIM = frozenset({"error", "result", "progress"})
_RUN_FIELDS = tuple(f.attname for f in Run._meta.concrete_fields if f.attname not in _RESET_BY_THE_CLAIM)
# Past this (large inputs), the message carries only the run's id: the broker's limits are
# far above it, and a read costs little beside moving that much.
CARRIED_MAX_BYTES = 64 * 1024
_SALT = "tasks_app.run_message"
# The fields carried, in order: a message of another version's shape is read from the database.
_SHAPE = hashlib.sha256(repr((_RUN_FIELDS, TASK_FIELDS)).encode()).hexdigest()[:16]


def _times(model: type[Model], names: tuple[str, ...]) -> frozenset[str]:
    fields = {field.attname: field for field in model._meta.concrete_fields}
    return frozenset(name for name in names if isinstance(fields[name], DateTimeField))


_RUN_TIMES, _TASK_TIMES = _times(Run, _RUN_FIELDS), _times(Task, TASK_FIELDS)


def _encode(instance: Model, names: tuple[str, ...], times: frozenset[str]) -> list[Any]:
    values = [getattr(instance, name) for name in names]
    return [v.isoformat() if v is not None and n in times else v for n, v in zip(names, values, strict=True)]


def _decode(
    model: type[Model], values: Any, names: tuple[str, ...], times: frozenset[str], using: str
) -> Any:
    if not isinstance(values, list) or len(values) != len(names):
        raise ValueError("another version's fields")
    decoded = [
        dt.datetime.fromisoformat(v) if v is not None and n in times else v
        for n, v in zip(names, values, strict=True)
    ]
    return model.from_db(using, list(names), decoded)


def carried(run: Run) -> dict[str, str]:
    """What a message of `run` carries beside its id and message number: {"carried": the run
    and its task, signed}, or nothing when that would be over CARRIED_MAX_BYTES."""
    payload = {
        "shape": _SHAPE,
        "run": _encode(run, _RUN_FIELDS, _RUN_TIMES),
        "task": _encode(run.task, TASK_FIELDS, _TASK_TIMES),
    }
    signed = signing.dumps(payload, salt=_SALT)
    return {"carried": signed} if len(signed) <= CARRIED_MAX_BYTES else {}


def from_message(signed: Any, using: str = "default") -> Run | None:
    """The run a message carries, with its task; None if it carries none, one whose signature
    does not hold, or one of another shape (sent by another version): the worker reads the
    run then."""
    if not isinstance(signed, str):
        return None
    try:
        payload = signing.loads(signed, salt=_SALT)
        if payload["shape"] != _SHAPE:
            return None
        run = _decode(Run, payload["run"], _RUN_FIELDS, _RUN_TIMES, using)
        task = _decode(Task, payload["task"], TASK_FIELDS, _TASK_TIMES, using)
    except (signing.BadSignature, KeyError, TypeError, ValueError):
        return None
    if run.task_id != task.pk:
        return None
    run.task = task
    return run
