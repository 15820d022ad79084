"""Alerts, the flip model: a rule's condition starting for a subject opens one alert; its ending
resolves that alert, once, with the downtime. Nothing repeats while it is open, unless the rule
asks for reminders. Each change is an AlertEvent and, in the same transaction, a Notification
per enabled channel of the rule (the outbox tasks_app.notifications delivers).

Who sees a condition start or end:
- lifecycle's after-move hook (`on_moves`, subscribed in AppConfig.ready): a run ending failed
  or cancelled, or completed (`failure`), a scheduled run starting or being skipped (`late`), a
  run leaving `running` (`overrun`), a workflow run failing or completing (`workflow_failure`).
  Every path that moves a run goes through it: a worker's outcome, an operator's cancel,
  recovery failing a run whose worker was SIGKILLed.
- beat's sweep (`sweep`, every ALERT_SWEEP_INTERVAL): instants of schedules that no run started
  for within the grace (`late`), runs running too long (`overrun`), workers that missed their
  heartbeats (`worker_offline`), reminders due; and, for each of these, alerts whose condition
  ended while no move said so. Each reads through an index, never all runs.
- scheduling.fire_due, for instants missed while no scheduler ran (`schedules_missed`).

An alert opens once however many processes see its condition at once: the unique
(rule, open_key) refuses a second open one, and a resolve is a compare-and-set on `open`.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Exists, OuterRef, Q
from django.urls import NoReverseMatch, reverse
from django.utils import timezone

from tasks_app import redis_client, workers
from tasks_app.choices import AlertCondition, AlertEventKind, AlertState, RunState, WorkflowState
from tasks_app.lifecycle import Move
from tasks_app.models import (
    Alert,
    AlertEvent,
    AlertRule,
    Notification,
    Run,
    Schedule,
    Worker,
    Workflow,
    WorkflowRun,
)
from tasks_app.models.schedules import RECOMPUTE

logger = logging.getLogger(__name__)
C, S = AlertCondition, RunState

# A run ending so counts against its task: a failure after its retries, or an operator's cancel.
FAILED_ENDS = frozenset({S.FAILED, S.CANCELLED})
ENDS = FAILED_ENDS | {S.COMPLETED}
WORKFLOW_ENDS = frozenset({WorkflowState.FAILED, WorkflowState.COMPLETED})
# What the sweep opens at most per rule and pass (the rest the next pass).
BATCH = 500
# Workers seen this long before a worker_offline rule was made are not watched by it: a
# registry keeps the hostnames of workers long gone.
WORKER_MEMORY = dt.timedelta(days=1)


@dataclass(frozen=True)
class Subject:
    """What an alert is about: a key unique per rule while open, and words for people."""

    key: str
    text: str
    task_id: int | None = None
    schedule_id: int | None = None


def _schedule_subject(schedule_id: int, what: str, task_id: int | None = None) -> Subject:
    return Subject(f"schedule:{schedule_id}", f"schedule {schedule_id} of {what}", task_id, schedule_id)


def _task_subject(task_id: int, name: str) -> Subject:
    return Subject(f"task:{task_id}", f"task {name}", task_id)


def _seconds(seconds: float) -> str:
    """12 s, 4 min 5 s, 3 h 2 min, 2 d 1 h: a duration for a reason."""
    seconds = max(0, round(seconds))
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "min", 60)):
        if seconds >= size:
            rest = (seconds % size) // smaller_size
            return f"{seconds // size} {unit}" + (f" {rest} {smaller}" if rest else "")
    if seconds >= 60:
        return f"{seconds // 60} min" + (f" {seconds % 60} s" if seconds % 60 else "")
    return f"{seconds} s"


def _at(instant: dt.datetime | None) -> str | None:
    return instant.isoformat() if instant else None


# --- rules ---------------------------------------------------------------------------

# The enabled rules, read at most every RULES_TTL seconds by each process: a worker asks at
# every move it makes. A change of a rule (API, admin) bumps a version in Redis after its
# commit; the evaluation of a run's end, which no sweep repeats, reads that version first, so
# it never judges by rules older than the last change.
RULES_TTL = 1.0
VERSION_KEY = settings.ALERT_KEY_PREFIX + "rules-version"
_rules: tuple[float, dict[str, list[AlertRule]], str | None] | None = None


def _version() -> str | None:
    try:
        return redis_client.client().get(VERSION_KEY) or "0"
    except redis_client.Error:
        return None  # judged by the rules at hand, at most RULES_TTL old


def rules_by_condition(*, fresh: bool = False, current: bool = False) -> dict[str, list[AlertRule]]:
    """The enabled rules by condition: at most RULES_TTL old, or `current` (as of the last
    change of any rule), or `fresh` (read now)."""
    global _rules
    version = _version() if current else None
    if (
        fresh
        or _rules is None
        or _rules[0] < time.monotonic()
        or (version is not None and version != _rules[2])
    ):
        version = version if version is not None else _version()
        grouped: dict[str, list[AlertRule]] = defaultdict(list)
        for rule in AlertRule.objects.select_related("task", "workflow").filter(enabled=True):
            grouped[rule.condition].append(rule)
        _rules = (time.monotonic() + RULES_TTL, grouped, version)
    return _rules[1]


def reset_rules() -> None:
    """Read the rules again at the next move of this process."""
    global _rules
    _rules = None


def forget_rules(**kwargs: Any) -> None:
    """A rule or its channels changed (a signal's receiver): this process reads them again, and
    every other at its next evaluation of a run's end, once the change is committed."""
    reset_rules()

    def bump() -> None:
        try:
            redis_client.client().incr(VERSION_KEY)
        except redis_client.Error:
            logger.warning("could not tell other processes that the alert rules changed")

    transaction.on_commit(bump)


def _covers_run(rule: AlertRule, run: Run, workflow_id: int | None) -> bool:
    return (
        (rule.task_id is None or rule.task_id == run.task_id)
        and (rule.schedule_id is None or rule.schedule_id == run.schedule_id)
        and (rule.workflow_id is None or rule.workflow_id == workflow_id)
    )


# --- opening and resolving -----------------------------------------------------------


def admin_url(alert: Alert) -> str:
    try:
        return settings.SITE_URL + reverse("admin:tasks_app_alert_change", args=[alert.pk])
    except NoReverseMatch:  # a site without the admin
        return ""


def payload(alert: Alert, rule: AlertRule, event: AlertEventKind, reason: str) -> dict[str, Any]:
    """What every channel is told of a change: the webhook's JSON body (API.md, Alerts)."""
    return {
        "event": str(event),
        "alert": alert.pk,
        "rule": rule.name,
        "condition": rule.condition,
        "subject": alert.subject,
        "reason": reason,
        "opened_at": _at(alert.opened_at),
        "resolved_at": _at(alert.resolved_at),
        "downtime_seconds": alert.downtime,
        "run": alert.run_id,
        "url": admin_url(alert),
    }


def _record(alert: Alert, rule: AlertRule, kind: AlertEventKind, reason: str, now: dt.datetime) -> None:
    """The event and its notifications, one per enabled channel (inside the caller's transaction)."""
    event = AlertEvent.objects.create(alert=alert, kind=kind, at=now, reason=reason[:1000])
    body = payload(alert, rule, kind, reason)
    Notification.objects.bulk_create(
        Notification(
            alert=alert,
            event=event,
            channel=channel,
            kind=kind,
            payload=body,
            next_attempt_at=now,
            created_at=now,
        )
        for channel in rule.channels.filter(enabled=True)
    )


def open_alert(
    rule: AlertRule,
    subject: Subject,
    reason: str,
    *,
    now: dt.datetime,
    run_id: int | None = None,
    scheduled_for: dt.datetime | None = None,
    since: dt.datetime | None = None,
    looked: bool = False,
) -> Alert | None:
    """Open an alert of `rule` for `subject` unless one is open; the new alert, or None.
    `since` is when the condition started, if before `now` (a failed run's end); `looked`:
    the caller found none open just now."""
    if not looked and Alert.objects.filter(rule=rule, open_key=subject.key).exists():
        return None
    reminder = rule.reminder_seconds
    try:
        with transaction.atomic():
            alert = Alert.objects.create(
                rule=rule,
                subject_key=subject.key,
                open_key=subject.key,
                subject=subject.text[:300],
                reason=reason[:1000],
                opened_at=min(since or now, now),
                run_id=run_id,
                task_id=subject.task_id,
                schedule_id=subject.schedule_id,
                scheduled_for=scheduled_for,
                remind_at=now + dt.timedelta(seconds=reminder) if reminder else None,
            )
            _record(alert, rule, AlertEventKind.OPENED, reason, now)
    except IntegrityError:
        return None  # opened meanwhile by another process (or its run, task or rule just went)
    logger.warning("alert %s opened (%s): %s: %s", alert.pk, rule.name, alert.subject, reason)
    return alert


def resolve_alert(alert: Alert, reason: str, *, now: dt.datetime) -> bool:
    """Resolve `alert` if it is still open; whether this call did."""
    with transaction.atomic():
        if not Alert.objects.filter(pk=alert.pk, state=AlertState.OPEN).update(
            state=AlertState.RESOLVED,
            open_key=None,
            resolved_at=now,
            resolution=reason[:1000],
            remind_at=None,
        ):
            return False
        alert.refresh_from_db()
        told = f"{reason}; it was open {_seconds(alert.downtime or 0)}"
        _record(alert, alert.rule, AlertEventKind.RESOLVED, told, now)
    logger.warning("alert %s resolved (%s): %s: %s", alert.pk, alert.rule.name, alert.subject, told)
    return True


class OpenNow:
    """Which of the keys a batch of moves can touch have an open alert, per rule: one lean
    read for the batch, so that the usual answer (none) costs one query, not one per rule."""

    def __init__(self, rules: list[AlertRule], keys: set[str]) -> None:
        self.pairs: set[tuple[int, str]] = set()
        if rules and keys:
            self.pairs = set(
                Alert.objects.filter(rule__in=rules, open_key__in=sorted(keys))
                .order_by()
                .values_list("rule_id", "open_key")
            )

    def has(self, rule: AlertRule, key: str) -> bool:
        return (rule.pk, key) in self.pairs

    def add(self, rule: AlertRule, key: str) -> None:
        self.pairs.add((rule.pk, key))


def _resolve_open(
    rules: Iterable[AlertRule], keys: dict[str, str], now: dt.datetime, known: OpenNow | None = None
) -> int:
    """Resolve the open alerts of `rules` whose key is in `keys` (key: the reason)."""
    rules = list(rules)
    if known is not None:
        keys = {key: why for key, why in keys.items() if any(known.has(rule, key) for rule in rules)}
    if not rules or not keys:
        return 0
    found = Alert.objects.select_related("rule").filter(rule__in=rules, open_key__in=list(keys))
    return sum(resolve_alert(alert, keys[alert.open_key], now=now) for alert in found)


# --- after a move --------------------------------------------------------------------


def on_moves(moves: list[Move]) -> None:
    """Lifecycle's subscriber: what the moves start or end."""
    ends = any(move.target in ENDS or move.target in WORKFLOW_ENDS for move in moves)
    rules = rules_by_condition(current=ends)
    if not rules:
        return
    run_moves = [m for m in moves if m.is_run and m.source != m.target and _matters(m, rules)]
    flows = [m for m in moves if not m.is_run and (m.target in WORKFLOW_ENDS or m.source == "")]
    if not run_moves and not flows:
        return
    now = timezone.now()
    failure_rules = rules.get(C.FAILURE, [])
    ended_runs = [m.subject for m in run_moves if m.target in ENDS]
    workflow_of = _workflows_of(ended_runs) if any(rule.workflow_id for rule in failure_rules) else {}
    keys = {f"workflow:{workflow_id}" for workflow_id in workflow_of.values()}
    for move in run_moves:
        keys |= {
            f"task:{move.subject.task_id}",
            f"run:{move.subject.pk}",
            f"schedule:{move.subject.schedule_id}",
        }
    for move in flows:
        keys |= {f"workflow:{move.subject.workflow_id}", f"schedule:{move.subject.schedule_id}"}
    known = OpenNow([rule for of_condition in rules.values() for rule in of_condition], keys)
    if run_moves:
        if failure_rules and ended_runs:
            ended = [(m.subject, m.target) for m in run_moves if m.target in ENDS]
            _failures(failure_rules, ended, workflow_of, known, now)
        if rules.get(C.LATE):
            _late_moves(rules[C.LATE], run_moves, known, now)
        if rules.get(C.OVERRUN):
            left = {
                f"run:{m.subject.pk}": f"run {m.subject.pk} is {m.target}"
                for m in run_moves
                if m.source == S.RUNNING
            }
            _resolve_open(rules[C.OVERRUN], left, now, known)
    if flows and rules.get(C.WORKFLOW_FAILURE):
        _workflow_failures(rules[C.WORKFLOW_FAILURE], flows, known, now)
    if flows and rules.get(C.LATE):
        started = {
            f"schedule:{m.subject.schedule_id}": f"workflow run {m.subject.pk} of it started"
            for m in flows
            if m.source == "" and m.subject.schedule_id
        }
        _resolve_open(rules[C.LATE], started, now, known)


def _matters(move: Move, rules: dict[str, list[AlertRule]]) -> bool:
    """Whether a run's move can start or end a condition of the rules at hand."""
    run = move.subject
    return bool(
        (move.target in ENDS and rules.get(C.FAILURE))
        or (run.schedule_id and move.target in (S.RUNNING, S.SKIPPED) and rules.get(C.LATE))
        or (move.source == S.RUNNING and rules.get(C.OVERRUN))
    )


def _workflows_of(runs: list[Run]) -> dict[int, int]:
    ids = {run.workflow_run_id for run in runs if run.workflow_run_id}
    if not ids:
        return {}
    return dict(WorkflowRun.objects.filter(pk__in=ids).values_list("pk", "workflow_id"))


def _failure_subject(rule: AlertRule, run: Run, workflow_id: int | None) -> Subject:
    if rule.schedule_id:
        return _schedule_subject(run.schedule_id, f"task {run.task.name}", run.task_id)
    if rule.workflow_id:
        return Subject(f"workflow:{workflow_id}", f"workflow {rule.workflow.name}")
    return _task_subject(run.task_id, run.task.name)


def _runs_of(subject: Subject, rule: AlertRule) -> Any:
    if rule.schedule_id:
        return Run.objects.filter(schedule_id=subject.schedule_id)
    if rule.workflow_id:
        return Run.objects.filter(workflow_run__workflow_id=rule.workflow_id)
    return Run.objects.filter(task_id=subject.task_id)


def _why_failed(run: Run, target: str) -> str:
    if target == S.CANCELLED:
        by = run.state_actor_name or run.state_actor
        return f"run {run.pk} was cancelled by {by}" + (f": {run.state_reason}" if run.state_reason else "")
    error = run.error if isinstance(run.error, dict) else {}
    what = ": ".join(str(part) for part in (error.get("type"), error.get("message")) if part)
    return f"run {run.pk} failed" + (f": {what[:500]}" if what else "")


def _failures(
    rules: list[AlertRule],
    ended: list[tuple[Run, str]],
    workflow_of: dict[int, int],
    known: OpenNow,
    now: dt.datetime,
) -> None:
    """Runs that ended (each with the state it moved to: later moves may have changed it)."""
    mended: dict[AlertRule, dict[str, tuple[str, dt.datetime | None]]] = defaultdict(dict)
    for run, target in ended:
        workflow_id = workflow_of.get(run.workflow_run_id)
        for rule in rules:
            if not _covers_run(rule, run, workflow_id):
                continue
            subject = _failure_subject(rule, run, workflow_id)
            if target == S.COMPLETED:
                if known.has(rule, subject.key):
                    mended[rule][subject.key] = (f"run {run.pk} completed", run.finished_at)
                continue
            if known.has(rule, subject.key):
                continue  # open already: no repeat, and no streak to count
            reason = _why_failed(run, target)
            if rule.consecutive > 1:
                # The streak up to this run: moves of other runs since may be evaluated later.
                last = list(
                    _runs_of(subject, rule)
                    .filter(state__in=ENDS, pk__lte=run.pk)
                    .order_by("-id")
                    .values_list("state", flat=True)[: rule.consecutive]
                )
                if len(last) < rule.consecutive or not set(last) <= FAILED_ENDS:
                    continue
                reason = f"{rule.consecutive} runs in a row did not complete; the last: {reason}"
            open_alert(rule, subject, reason, now=now, run_id=run.pk, since=run.finished_at, looked=True)
            known.add(rule, subject.key)  # opened, or by another process meanwhile
    for rule, keys in mended.items():
        # Only by a run that completed after the failure that opened it: hooks of runs that
        # ended on other workers are not called in the order the runs ended.
        found = Alert.objects.select_related("rule").filter(rule=rule, open_key__in=list(keys))
        for alert in found:
            reason, finished_at = keys[alert.open_key]
            if finished_at is None or finished_at >= alert.opened_at:
                resolve_alert(alert, reason, now=now)


def _late_moves(rules: list[AlertRule], moves: list[Move], known: OpenNow, now: dt.datetime) -> None:
    started: dict[str, str] = {}
    for move in moves:
        run = move.subject
        if not run.schedule_id:
            continue
        if move.target == S.RUNNING:
            started[f"schedule:{run.schedule_id}"] = f"run {run.pk} of it started"
        elif move.target == S.SKIPPED and move.source == S.CREATED:
            # A forbid policy said no: this instant will have no run.
            for rule in rules:
                if _covers_run(rule, run, None) and not rule.workflow_id:
                    subject = _schedule_subject(run.schedule_id, f"task {run.task.name}", run.task_id)
                    why = f"run {run.pk} for {_at(run.scheduled_for)} was skipped: {run.state_reason}"
                    if not known.has(rule, subject.key):
                        open_alert(
                            rule, subject, why, now=now, run_id=run.pk, scheduled_for=run.scheduled_for
                        )
                        known.add(rule, subject.key)
    if started:
        _resolve_open(rules, started, now, known)


def _workflow_failures(rules: list[AlertRule], moves: list[Move], known: OpenNow, now: dt.datetime) -> None:
    ended = [m.subject for m in moves if m.target in (WorkflowState.FAILED, WorkflowState.COMPLETED)]
    if not ended:
        return
    names = dict(Workflow.objects.filter(pk__in={w.workflow_id for w in ended}).values_list("pk", "name"))
    for workflow_run in ended:
        subject = Subject(
            f"workflow:{workflow_run.workflow_id}", f"workflow {names.get(workflow_run.workflow_id)}"
        )
        for rule in rules:
            if (rule.workflow_id or workflow_run.workflow_id) != workflow_run.workflow_id or (
                rule.schedule_id and rule.schedule_id != workflow_run.schedule_id
            ):
                continue
            if workflow_run.state == WorkflowState.FAILED:
                if not known.has(rule, subject.key):
                    why = f"workflow run {workflow_run.pk} failed: {workflow_run.state_reason}"
                    open_alert(rule, subject, why, now=now, looked=True)
                    known.add(rule, subject.key)
            else:
                _resolve_open([rule], {subject.key: f"workflow run {workflow_run.pk} completed"}, now, known)


def schedules_missed(missed: list[tuple[Schedule, list[dt.datetime]]], *, now: dt.datetime) -> None:
    """Instants of schedules that passed while no scheduler ran (scheduling.fire_due, in its
    transaction): each such schedule is late for the late rules that watch it."""
    rules = rules_by_condition().get(C.LATE, [])
    for schedule, instants in missed:
        for rule in rules:
            if not _covers_schedule(rule, schedule):
                continue
            subject = _schedule_subject(schedule.pk, schedule.target_text, schedule.task_id)
            why = (
                f"{len(instants)} instant(s) from {_at(instants[0])} passed while no scheduler ran "
                f"(misfire policy {schedule.misfire_policy})"
            )
            open_alert(rule, subject, why, now=now, scheduled_for=instants[0])


def _covers_schedule(rule: AlertRule, schedule: Schedule) -> bool:
    return (
        (rule.task_id is None or rule.task_id == schedule.task_id)
        and (rule.schedule_id is None or rule.schedule_id == schedule.pk)
        and (rule.workflow_id is None or rule.workflow_id == schedule.workflow_id)
    )


# --- beat's sweep --------------------------------------------------------------------


def sweep(now: dt.datetime | None = None) -> int:
    """Open and resolve what no move announces (late, overrun, worker_offline) and send the
    reminders due; returns how many alerts changed. One rule's trouble stops no other."""
    now = now or timezone.now()
    rules = rules_by_condition(fresh=True)
    changed = 0
    for condition, check in (
        (C.LATE, _sweep_late),
        (C.OVERRUN, _sweep_overrun),
        (C.WORKER_OFFLINE, _sweep_workers),
    ):
        for rule in rules.get(condition, []):
            try:
                changed += check(rule, now)
            except Exception:
                logger.exception("alert rule %s (%s) could not be evaluated", rule.pk, rule.name)
    return changed + send_reminders(now)


def _open_keys(rule: AlertRule) -> dict[str, Alert]:
    # (rule, open_key) is unique and indexed: the open ones of a rule are a range of it.
    found = Alert.objects.select_related("schedule").filter(rule=rule, open_key__isnull=False).order_by()
    return {alert.open_key: alert for alert in found}


def _alerted(rule: AlertRule, **subject: Any) -> Exists:
    """Whether `rule` has an open alert about the outer row (schedule_id=OuterRef(...), ...):
    a batch skips what is open already, so the rest is reached in the next passes."""
    return Exists(Alert.objects.filter(rule=rule, state=AlertState.OPEN, **subject))


def _sweep_late(rule: AlertRule, now: dt.datetime) -> int:
    cutoff = now - dt.timedelta(seconds=rule.grace_seconds)
    known = _open_keys(rule)
    changed = 0
    # Instants that no scheduler fired (schedule_due index: enabled, next_fire_at).
    scope = Q(task_id=rule.task_id) if rule.task_id else Q()
    scope &= Q(pk=rule.schedule_id) if rule.schedule_id else Q()
    scope &= Q(workflow_id=rule.workflow_id) if rule.workflow_id else Q()
    overdue = (
        Schedule.objects.select_related("task", "workflow")
        .filter(scope, enabled=True, next_fire_at__gt=RECOMPUTE, next_fire_at__lt=cutoff)
        .exclude(_alerted(rule, schedule_id=OuterRef("pk")))
        .order_by("next_fire_at")[:BATCH]
    )
    for schedule in overdue:
        subject = _schedule_subject(schedule.pk, schedule.target_text, schedule.task_id)
        if subject.key in known:
            continue
        why = (
            f"its instant {_at(schedule.next_fire_at)} was not fired: "
            f"no scheduler fired it within {rule.grace_seconds} s"
        )
        changed += bool(open_alert(rule, subject, why, now=now, scheduled_for=schedule.next_fire_at))
    # Schedules the scheduler set aside (their timing cannot be computed): they fire no more.
    aside = (
        Schedule.objects.select_related("task", "workflow")
        .filter(scope, enabled=True, next_fire_at__isnull=True, invalid_reason__gt="")
        .exclude(_alerted(rule, schedule_id=OuterRef("pk")))[:BATCH]
    )
    for schedule in aside:
        subject = _schedule_subject(schedule.pk, schedule.target_text, schedule.task_id)
        if subject.key not in known:
            why = f"it fires no more until edited: {schedule.invalid_reason}"
            changed += bool(open_alert(rule, subject, why, now=now))
    # Runs fired and not started (run_state_due index: state first), but not where a run of a
    # later instant started: that is what resolves a late alert, so opening one would flap.
    scope = Q(task_id=rule.task_id) if rule.task_id else Q()
    scope &= Q(schedule_id=rule.schedule_id) if rule.schedule_id else Q()
    if not rule.workflow_id:  # a workflow's schedule starts workflow runs, born running
        later_started = Run.objects.filter(
            schedule_id=OuterRef("schedule_id"),
            scheduled_for__gt=OuterRef("scheduled_for"),
            started_at__isnull=False,
        )
        waiting = (
            Run.objects.select_related("task")
            .filter(scope, state__in=[S.CREATED, S.PENDING], schedule__isnull=False, scheduled_for__lt=cutoff)
            .exclude(_alerted(rule, schedule_id=OuterRef("schedule_id")))
            .exclude(Exists(later_started))
            .order_by("scheduled_for")[:BATCH]
        )
        online = None
        for run in waiting:
            subject = _schedule_subject(run.schedule_id, f"task {run.task.name}", run.task_id)
            if subject.key in known:
                continue
            if online is None:
                online = list(workers.online_workers(now))
            why = (
                f"run {run.pk} for {_at(run.scheduled_for)} has not started "
                f"{_seconds((now - run.scheduled_for).total_seconds())} after it ({run.state}"
            )
            if run.state == S.PENDING:
                serving = workers.online_serving(run.task.queue, run.task.handler, online)
                why += f"; {serving} online worker(s) take queue {run.task.queue} with its handler"
            opened = open_alert(
                rule, subject, why + ")", now=now, run_id=run.pk, scheduled_for=run.scheduled_for
            )
            if opened:
                known[subject.key] = opened
                changed += 1
    # Open ones whose schedule has since had a run start (a move said so, unless lost), or stopped.
    for alert in known.values():
        reason = _late_ended(alert)
        if reason:
            changed += resolve_alert(alert, reason, now=now)
    return changed


def _late_ended(alert: Alert) -> str:
    schedule = alert.schedule
    if schedule is None:
        return "the schedule was deleted"
    if not schedule.enabled:
        return "the schedule was paused"
    since = alert.scheduled_for or alert.opened_at
    if schedule.workflow_id:
        started = WorkflowRun.objects.filter(schedule_id=schedule.pk, created_at__gte=since).exists()
    else:
        started = Run.objects.filter(
            schedule_id=schedule.pk, scheduled_for__gte=since, started_at__isnull=False
        ).exists()
    return "a run of it started" if started else ""


def _sweep_overrun(rule: AlertRule, now: dt.datetime) -> int:
    if not rule.max_seconds:
        return 0
    known = _open_keys(rule)
    scope = Q(task_id=rule.task_id) if rule.task_id else Q()
    scope &= Q(schedule_id=rule.schedule_id) if rule.schedule_id else Q()
    scope &= Q(workflow_run__workflow_id=rule.workflow_id) if rule.workflow_id else Q()
    # state_changed_at of a running run is when this attempt started (run_state_due: state first).
    running = (
        Run.objects.select_related("task")
        .filter(scope, state=S.RUNNING, state_changed_at__lt=now - dt.timedelta(seconds=rule.max_seconds))
        .exclude(_alerted(rule, run_id=OuterRef("pk")))
        .order_by("state_changed_at")[:BATCH]
    )
    changed = 0
    for run in running:
        subject = Subject(
            f"run:{run.pk}", f"run {run.pk} of task {run.task.name}", run.task_id, run.schedule_id
        )
        if subject.key in known:
            known.pop(subject.key)
            continue
        why = (
            f"running for {_seconds((now - run.state_changed_at).total_seconds())}, longer than "
            f"{_seconds(rule.max_seconds)}, on worker {run.worker or '?'}"
        )
        changed += bool(open_alert(rule, subject, why, now=now, run_id=run.pk))
    # The rest of the open ones: their run is no longer running, or not for that long.
    still = Run.objects.filter(pk__in=[a.run_id for a in known.values() if a.run_id], state=S.RUNNING)
    running_ids = set(still.values_list("pk", flat=True))
    for alert in known.values():
        if alert.run_id not in running_ids:
            state = Run.objects.filter(pk=alert.run_id).values_list("state", flat=True).first()
            changed += resolve_alert(alert, f"run {alert.run_id} is {state or 'gone'}", now=now)
    return changed


def _sweep_workers(rule: AlertRule, now: dt.datetime) -> int:
    known = _open_keys(rule)
    since = Worker.online_since(now)
    changed = 0
    watched = Worker.objects.filter(last_heartbeat__gte=rule.created_at - WORKER_MEMORY)
    seen = set()
    for worker in watched:
        key = f"worker:{worker.hostname}"
        seen.add(key)
        offline = worker.stopped_at is None and worker.last_heartbeat <= since
        if offline and key not in known:
            age = _seconds((now - worker.last_heartbeat).total_seconds())
            why = (
                f"no heartbeat for {age} (one is due every {_seconds(settings.WORKER_HEARTBEAT_INTERVAL)}); "
                f"its last at {_at(worker.last_heartbeat)}"
            )
            changed += bool(open_alert(rule, Subject(key, f"worker {worker.hostname}"), why, now=now))
        elif not offline and key in known:
            why = "it heartbeats again" if worker.stopped_at is None else "it stopped cleanly"
            changed += resolve_alert(known[key], why, now=now)
    for key, alert in known.items():
        if key not in seen:
            changed += resolve_alert(alert, "the worker is no longer in the registry", now=now)
    return changed


def send_reminders(now: dt.datetime) -> int:
    """Tell again of open alerts whose rule's reminder_seconds have passed; returns how many."""
    sent = 0
    due = Alert.objects.select_related("rule").filter(state=AlertState.OPEN, remind_at__lte=now)[:BATCH]
    for alert in due:
        rule = alert.rule
        every = rule.reminder_seconds
        with transaction.atomic():
            claimed = Alert.objects.filter(
                pk=alert.pk, state=AlertState.OPEN, remind_at=alert.remind_at
            ).update(remind_at=now + dt.timedelta(seconds=every) if every else None)
            if claimed and every and rule.enabled:
                age = _seconds((now - alert.opened_at).total_seconds())
                why = f"still open, since {_at(alert.opened_at)} ({age})"
                _record(alert, rule, AlertEventKind.REMINDER, why, now)
                sent += 1
    return sent
