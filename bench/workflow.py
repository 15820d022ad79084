"""A 200-step DAG of builtin.noop beside the same 200 runs submitted independently.

The DAG: a root fanning out to 50 parallel chains that fan back in to one join, 200
steps in all. Both are executed by the same real worker (prefork, concurrency 2) on
the same MariaDB and Redis, in the same run; rounds alternate the two. The overhead
per step is (DAG time - independent time) / 200. Figures go to
bench/results/workflow.json.

    .venv/bin/python bench/workflow.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import REDIS_URL, RESULTS, ROOT, ensure_database, platform_env, wait_until, write_results
from bench.common import probe as bench_probe

STEPS = 200
WIDTH = 50
ENV = platform_env(LOG_LEVEL="WARNING")


def dag_steps() -> list[dict[str, Any]]:
    """root -> layers of WIDTH parallel chains -> one join; STEPS in all.

    (A chain of fan-in joins would make builtin.noop's result, which nests its
    upstream results, grow exponentially past RUN_RESULT_MAX_BYTES.)
    """
    steps = [{"key": "root", "task": "bench-noop"}]
    previous = ["root"]
    layer = 0
    while len(steps) < STEPS - 1:
        width = min(WIDTH, STEPS - 1 - len(steps))
        keys = [f"l{layer}-{i}" for i in range(width)]
        steps += [
            {"key": key, "task": "bench-noop", "depends_on": [previous[i % len(previous)]]}
            for i, key in enumerate(keys)
        ]
        previous, layer = keys, layer + 1
    steps.append({"key": "join", "task": "bench-noop", "depends_on": previous})
    return steps


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(RESULTS / "workflow.json"))
    args = parser.parse_args()

    ensure_database()
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=ROOT, env=ENV, check=True)
    os.environ.update(ENV)
    import django

    django.setup()
    import redis

    from tasks_app import submission, workflows
    from tasks_app.models import Run, Task, Workflow, WorkflowRun
    from tasks_app.models.workflows import check_steps
    from tasks_app.submission import RunRequest

    redis.Redis.from_url(REDIS_URL).flushdb()
    task, _ = Task.objects.get_or_create(name="bench-noop", defaults={"handler": "builtin.noop"})
    steps = check_steps(dag_steps(), {"bench-noop"})
    workflow, _ = Workflow.objects.update_or_create(name="bench-dag", defaults={"steps": steps})

    worker = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "scheduler_site", "worker", "-c", "2", "-l", "warning",
         "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", "bench-workflow@%h"],
        cwd=ROOT, env=ENV, start_new_session=True,
    )  # fmt: skip
    figures: dict[str, list[float]] = {"dag_s": [], "independent_s": []}
    try:
        probe = bench_probe(platform=True)
        wait_until(lambda: probe.control.ping(timeout=0.5), 60, "the worker")
        for number in range(args.rounds):
            started = time.perf_counter()
            workflow_run = workflows.start(workflow, by="bench")
            wait_until(
                lambda pk=workflow_run.pk: WorkflowRun.objects.filter(pk=pk, state="completed").exists(),
                300,
                "the DAG",
            )
            figures["dag_s"].append(time.perf_counter() - started)

            started = time.perf_counter()
            runs = submission.submit_many([RunRequest(task=task) for _ in range(len(steps))], by="bench")
            ids = [run.pk for run in runs]
            done = Run.objects.filter(pk__in=ids, state="completed")
            expected = len(ids)
            wait_until(lambda done=done, n=expected: done.count() == n, 300, "the independent runs")
            figures["independent_s"].append(time.perf_counter() - started)
            print(f"round {number + 1}: dag {figures['dag_s'][-1]:.2f}s, "
                  f"independent {figures['independent_s'][-1]:.2f}s", flush=True)  # fmt: skip
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=30)

    dag, independent = statistics.median(figures["dag_s"]), statistics.median(figures["independent_s"])
    summary = {
        "steps": len(steps),
        "shape": f"root, fan-out to {WIDTH} parallel chains, fan-in to one join",
        "rounds": figures,
        "median_dag_s": round(dag, 3),
        "median_independent_s": round(independent, 3),
        "overhead_per_step_ms": round((dag - independent) / len(steps) * 1000, 2),
        "worker": "prefork, concurrency 2",
    }
    write_results(args.out, summary, {k: v for k, v in summary.items() if k != "rounds"})


if __name__ == "__main__":
    main()
