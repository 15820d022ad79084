"""Do the shortcuts past the framework pay for themselves? Each beside the plain call it
replaces, interleaved in one process on the same MariaDB and Redis:

  move_update   lifecycle._conditional_update() vs Run.objects.filter(...).update(...), with
                the same fields a claim writes (the event trigger fires for both)
  load_run      run_loader.get_with_task() vs Run.objects.select_related("task").get()
  throttle      the submit throttle's count, one script on the cache's Redis client, vs the
                cache API's add(), incr() and get() it replaced (every submission pays it)
  insert_500    lifecycle._insert() of 500 runs vs Run.objects.bulk_create() (a bulk, a burst
                of fires); per run. (For one run, a submit's, it gained nothing over save():
                1 row costs the database more than the compiling.)
  publish_1000  broker.publish() of 1,000 runs (Celery's task message put through the producer)
                vs the same messages through app.send_task(), pipelined alike; per message

Each figure is microseconds per call (median of ROUNDS rounds of CALLS calls), and the ratio
ORM / shortcut. Figures go to bench/results/orm.json.

    .venv/bin/python bench/orm.py [--calls 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import RESULTS, ensure_database, platform_env, write_results


def per_call_us(operation: Callable[[int], object], calls: int) -> float:
    started = time.perf_counter()
    for number in range(calls):
        operation(number)
    return (time.perf_counter() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    ensure_database()
    os.environ.update(platform_env(LOG_LEVEL="WARNING"))
    import django

    django.setup()
    from django.core.management import call_command
    from django.utils import timezone

    from tasks_app import lifecycle
    from tasks_app.choices import Actor, RunState
    from tasks_app.models import Run, Task
    from tasks_app.run_loader import get_with_task

    call_command("migrate", verbosity=0)
    task, _ = Task.objects.get_or_create(name="bench-orm", defaults={"handler": "builtin.noop"})
    run = Run.objects.create(task=task, state=RunState.PENDING, message_number=1)
    states = (RunState.PENDING, RunState.RUNNING)

    def fields(number: int) -> dict:
        target = states[(number + 1) % 2]
        return {
            **lifecycle.move_fields(target, at=timezone.now(), reason="bench", actor=Actor.WORKER),
            "attempt": number,
            "worker": "bench@host",
            "started_at": timezone.now(),
            "progress": None,
            "error": None,
            "due_at": None,
        }

    def shortcut_update(number: int) -> None:
        conditions = {"id": run.pk, "state": states[number % 2], "message_number": 1}
        assert lifecycle._conditional_update(conditions, fields(number)) == 1

    def orm_update(number: int) -> None:
        updated = Run.objects.filter(pk=run.pk, state=states[number % 2], message_number=1).update(
            **fields(number)
        )
        assert updated == 1

    from django.core.cache import cache

    from tasks_app.api.throttles import SubmitThrottle

    throttle = SubmitThrottle()

    def script_count(_number: int) -> None:
        throttle._count("bench:throttle:now", "bench:throttle:before", 1, 120)

    def cache_count(_number: int) -> None:
        cache.add("bench:throttle:now", 0, timeout=120)
        cache.incr("bench:throttle:now", 1)
        cache.get("bench:throttle:before", 0)

    def unsaved(count: int) -> list[Run]:
        return [
            Run(task=task, state=RunState.PENDING, message_number=1, kwargs={"i": i}) for i in range(count)
        ]

    def insert_500(insert: Callable[[list[Run]], object], calls: int) -> float:
        batches = [unsaved(500) for _ in range(max(1, calls // 500))]
        started = time.perf_counter()
        for batch in batches:
            insert(batch)
        return (time.perf_counter() - started) / (500 * len(batches)) * 1e6

    from celery import current_app

    from tasks_app import broker, run_loader

    published = Run.objects.bulk_create(unsaved(1000))
    for each in published:
        each.task = task

    def send_task_1000(runs: list[Run]) -> None:
        app = current_app
        with app.producer_or_acquire() as producer, producer.batch(max_size=broker.BATCH):
            for each in runs:
                soft, hard = broker.time_limits(each.task)
                names = {"run_id": each.pk, "message_number": each.message_number}
                app.send_task(
                    each.task.handler,
                    kwargs={**names, **run_loader.carried(each)},
                    kwargsrepr=repr(names),
                    task_id=each.message_id,
                    shadow=each.task.name,
                    queue=each.task.queue,
                    priority=broker.message_priority(each.priority),
                    soft_time_limit=soft,
                    time_limit=hard,
                    producer=producer,
                )

    def publish_1000(publish: Callable[[list[Run]], object]) -> float:
        started = time.perf_counter()
        publish(published)
        elapsed = time.perf_counter() - started
        broker_redis.flushdb()
        return elapsed / len(published) * 1e6

    import redis

    broker_redis = redis.Redis.from_url(os.environ["BROKER_URL"])

    figures: dict[str, dict[str, list[float]]] = {
        "move_update": {"shortcut_us": [], "orm_us": []},
        "load_run": {"shortcut_us": [], "orm_us": []},
        "throttle": {"shortcut_us": [], "orm_us": []},
        "insert_500": {"shortcut_us": [], "orm_us": []},
        "publish_1000": {"shortcut_us": [], "orm_us": []},
    }
    for _round in range(args.rounds):
        # An even number of calls each: the run ends every round where it started.
        figures["move_update"]["shortcut_us"].append(per_call_us(shortcut_update, args.calls))
        figures["move_update"]["orm_us"].append(per_call_us(orm_update, args.calls))
        figures["load_run"]["shortcut_us"].append(per_call_us(lambda _n: get_with_task(run.pk), args.calls))
        figures["load_run"]["orm_us"].append(
            per_call_us(lambda _n: Run.objects.select_related("task").get(pk=run.pk), args.calls)
        )
        figures["throttle"]["shortcut_us"].append(per_call_us(script_count, args.calls))
        figures["throttle"]["orm_us"].append(per_call_us(cache_count, args.calls))
        figures["insert_500"]["shortcut_us"].append(insert_500(lifecycle._insert, args.calls))
        figures["insert_500"]["orm_us"].append(insert_500(Run.objects.bulk_create, args.calls))
        figures["publish_1000"]["shortcut_us"].append(publish_1000(broker.publish))
        figures["publish_1000"]["orm_us"].append(publish_1000(send_task_1000))
    Run.objects.filter(task=task).delete()
    cache.delete_many(["bench:throttle:now", "bench:throttle:before"])
    shown = {}
    for name, sides in figures.items():
        shortcut, orm = statistics.median(sides["shortcut_us"]), statistics.median(sides["orm_us"])
        shown[name] = {
            "shortcut_us": round(shortcut, 1),
            "orm_us": round(orm, 1),
            "orm_over_shortcut": round(orm / shortcut, 2),
        }
    write_results(
        str(RESULTS / "orm.json"),
        {"calls": args.calls, "rounds": args.rounds, **figures, "median": shown},
        shown,
    )


if __name__ == "__main__":
    main()
