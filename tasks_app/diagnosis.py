"""Why a run is not running: what a created, pending, retrying or paused run waits for, in
short sentences for its page in the admin (Airflow's "task instance details" answer the same
question with its dependency checks).

Each reason is read from where the platform decides: the run's due_at (scheduling), its
workflow run's steps (workflows.verdict), the task's concurrency lock (concurrency.holder_of),
the worker registry (Worker.serves) and the pending runs on its queue.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.conf import settings
from django.db.models import Q
from django.utils import timezone

from tasks_app import concurrency, redis_client, workers, workflows
from tasks_app.choices import TERMINAL_STATES, ConcurrencyPolicy, RunState
from tasks_app.models import Run, Worker, WorkflowRun

S = RunState
WAITING = frozenset({S.CREATED, S.PENDING, S.RETRYING, S.PAUSED})
AHEAD_COUNTED = 1000


@dataclass(frozen=True)
class Reason:
    """One thing a run waits for; `run_id` names the run it waits on, if one (a slot's
    holder, an upstream step)."""

    text: str
    run_id: int | None = None


def why_not_running(run: Run, *, now: dt.datetime | None = None) -> list[Reason]:
    """What holds `run` back; nothing for a run that is running or finished.

    At most four queries, none per step or per worker, and one Redis read for a run a
    concurrency policy holds.
    """
    if run.state not in WAITING:
        return []
    now = now or timezone.now()
    reasons = []
    if run.state == S.PAUSED:
        by = f" by {run.state_actor_name}" if run.state_actor_name else ""
        reasons.append(Reason(f"Paused{by} at {_at(run.state_changed_at)}: it is not sent until resumed."))
    reasons += _time(run, now)
    if run.workflow_run_id and run.state == S.CREATED:
        reasons += _upstream(run)
    reasons += _slot(run)
    if not run.task.enabled:
        reasons.append(
            Reason(
                f"Task {run.task.name} is disabled: it takes no new runs (this one, submitted before, "
                "is still sent)."
            )
        )
    unserved = _workers(run, now)
    reasons += unserved
    if run.state == S.PENDING:
        count = ahead_of(run)
        if count:
            many = f"More than {AHEAD_COUNTED}" if count > AHEAD_COUNTED else str(count)
            reasons.append(Reason(f"{many} run(s) are ahead of it on queue {run.task.queue}."))
        elif not unserved:
            reasons.append(Reason(f"It is next on queue {run.task.queue}: the first free worker takes it."))
    return reasons


def _at(value: dt.datetime) -> str:
    return f"{timezone.localtime(value):%Y-%m-%d %H:%M:%S %Z}"


def _time(run: Run, now: dt.datetime) -> list[Reason]:
    if run.due_at is None or run.due_at <= now:
        return []
    at = _at(run.due_at)
    if run.state == S.RETRYING:
        return [Reason(f"Waiting out its retry backoff: attempt {run.attempt + 1} is due at {at}.")]
    if run.state == S.PENDING:
        return [Reason(f"Its message did not reach the broker: it is sent again at {at}.")]
    return [Reason(f"Waiting for its time: it is due at {at}.")]


def _upstream(run: Run) -> list[Reason]:
    steps = WorkflowRun.objects.values_list("steps", flat=True).filter(pk=run.workflow_run_id).first() or []
    step = next((s for s in steps if s.get("key") == run.step), None)
    if step is None or not step.get("depends_on"):
        return []
    latest = {}  # each upstream step's latest run (a step retried has several)
    for key, state, pk in (
        Run.objects.filter(workflow_run_id=run.workflow_run_id, step__in=step["depends_on"])
        .order_by("id")
        .values_list("step", "state", "id")
    ):
        latest[key] = (state, pk)
    upstream = {key: latest.get(key, (S.CREATED, None)) for key in step["depends_on"]}
    rule = step.get("trigger_rule", "all_success")
    if workflows.verdict(rule, [state for state, _pk in upstream.values()]) != workflows.WAIT:
        return []
    return [
        Reason(f"Waiting for upstream step {key} ({state}; its trigger rule is {rule}).", run_id=pk)
        for key, (state, pk) in upstream.items()
        if state not in TERMINAL_STATES
    ]


def _slot(run: Run) -> list[Reason]:
    policy = run.task.concurrency_policy
    # As Run.objects.waiting_for_slot(): a created run with no time to wait for, outside workflows.
    if policy == ConcurrencyPolicy.ALLOW or run.state != S.CREATED or run.due_at or run.workflow_run_id:
        return []
    waiting = f"Waiting for a concurrency slot (policy {policy})"
    try:
        holder = concurrency.holder_of(run.task_id)
    except redis_client.Error as exc:
        return [Reason(f"{waiting}; who holds it cannot be read now: {exc}.")]
    if holder is None or holder == run.pk:
        return [Reason(f"{waiting}: it is free, and beat sends the run within seconds.")]
    return [Reason(f"{waiting}: run {holder} holds task {run.task.name}'s lock.", run_id=holder)]


def _workers(run: Run, now: dt.datetime) -> list[Reason]:
    queue, handler = run.task.queue, run.task.handler
    online: list[Worker] = list(workers.online_workers(now))
    if workers.online_serving(queue, handler, online):
        return []
    if not online:
        return [Reason("No worker is online: it waits until one starts.")]
    on_queue = [worker for worker in online if queue in worker.queues]
    if not on_queue:
        return [Reason(f"No online worker takes queue {queue}: start one with -Q {queue}.")]
    return [
        Reason(
            f"{len(on_queue)} online worker(s) take queue {queue}, but none has handler {handler}: "
            f"after {settings.RUN_MAX_DELIVERIES} refused deliveries the run fails."
        )
    ]


def ahead_of(run: Run) -> int:
    """Pending runs that a worker of `run`'s queue takes before it: those of a higher priority
    (the broker serves those first, whenever they were sent), and those of the same priority
    sent before it (its move to pending; the id breaks a tie). One COUNT on the state_due
    index's leading column, joined to the tasks for their queue.
    """
    earlier = Q(state_changed_at__lt=run.state_changed_at) | Q(
        state_changed_at=run.state_changed_at, pk__lt=run.pk
    )
    ahead = Run.objects.filter(state=S.PENDING, task__queue=run.task.queue).filter(
        Q(priority__gt=run.priority) | (Q(priority=run.priority) & earlier)
    )
    # Counted up to AHEAD_COUNTED: a backlog of millions is not read whole for one page.
    return ahead.values("pk")[: AHEAD_COUNTED + 1].count()
