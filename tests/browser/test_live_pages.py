"""Pages that change while they are looked at: a running sleep's page, its log and progress bar
moved by run.js as a real worker process runs it, and the schedule editor, whose description
and next fire times follow what is typed (schedule_editor.js, through the API's preview)."""

from __future__ import annotations

import datetime as dt
import itertools
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from django.utils import timezone
from playwright.sync_api import Page, expect

from tasks_app import submission
from tasks_app.lifecycle import RunState
from tasks_app.models import Run, Task, Worker
from tests.conftest import wait_until
from tests.integration.conftest import READY, Process, process_env

ADMIN = "/admin/tasks_app"
WORKER_NAME = "browser"
SLEEP_SECONDS = 8  # a line and a progress step a second: enough to watch a few arrive

# Counts, in the page and as it happens, the fetches of run.js's /live/ URL (then passes them
# on): a request made is counted before fetch() returns, so the count is exact at any instant,
# unlike the network events that reach the test some time after.
COUNT_LIVE_FETCHES = """
window.liveFetches = 0;
const pageFetch = window.fetch.bind(window);
window.fetch = (resource, options) => {
  if (String(resource).includes("/live/")) window.liveFetches += 1;
  return pageFetch(resource, options);
};
"""


@pytest.fixture(scope="module")
def worker(django_db_setup: Any, django_db_blocker: Any, tmp_path_factory: Any) -> Iterator[Process]:
    """One real worker process (prefork, one child) against the test database and Redis,
    started once for the module, stopped at its end, its rows then removed."""
    redis.Redis.from_url(settings.REDIS_URL).flushdb()
    log = tmp_path_factory.mktemp("browser-worker") / "worker.log"
    name = f"{WORKER_NAME}@%h"
    args = ["worker", "-l", "info", "-c", "1", "-n", name, "--without-gossip", "--without-mingle"]
    process = Process("worker", args, process_env(), log)
    try:

        def up() -> bool:
            if process.popen.poll() is not None:
                raise AssertionError(f"the worker exited at start:\n{process.output()[-3000:]}")
            return READY["worker"] in process.output()

        wait_until(up, timeout=60, what="the worker to be up")
        yield process
    finally:
        process.stop()
        # Its heartbeat may have written its row after the last test's flush: no other test
        # is to see a worker it did not start.
        with django_db_blocker.unblock():
            Worker.objects.filter(hostname__startswith=f"{WORKER_NAME}@").delete()


def _state(run: Run) -> str:
    return Run.objects.values_list("state", flat=True).get(pk=run.pk)


def test_a_running_sleeps_page_follows_its_log_and_progress_and_stops_once_it_completed(
    signed_in_page: Page, worker: Process, make_task: Callable[..., Task]
) -> None:
    page = signed_in_page
    page.add_init_script(COUNT_LIVE_FETCHES)
    page.clock.install()  # time flows as usual until the test moves it on (at the end)
    task = make_task(name="nap", handler="builtin.sleep")
    run, _ = submission.submit(submission.RunRequest(task=task, kwargs={"seconds": SLEEP_SECONDS}), by="boss")

    def running() -> bool:
        state = _state(run)
        if state not in (RunState.PENDING, RunState.RUNNING):
            raise AssertionError(f"run {run.pk} is {state}; the worker said:\n{worker.output()[-3000:]}")
        return state == RunState.RUNNING

    wait_until(running, timeout=30, what=f"run {run.pk} to be running")

    page.goto(f"{ADMIN}/run/{run.pk}/change/")

    badge = page.locator(".field-state_mark .readonly .state-badge")
    lines = page.locator("#run-log .log-message")
    bar = page.locator("#run-progress")
    expect(badge).to_have_text(RunState.RUNNING.value)
    first_lines = lines.count()
    first_value = bar.evaluate("bar => bar.value")
    assert first_lines <= SLEEP_SECONDS - 3, f"the page was drawn late: {first_lines} lines already"
    page.evaluate("window.drawnOnce = true")  # gone if the page were loaded again

    # Two more lines than the page was drawn with, and a fuller bar, without a reload.
    expect(lines.nth(first_lines + 1)).to_be_attached()
    expect(bar).not_to_have_js_property("value", first_value)
    later_value = bar.evaluate("bar => bar.value")
    assert first_value < later_value <= 1, (first_value, later_value)

    expect(badge).to_have_text(RunState.COMPLETED.value, timeout=(SLEEP_SECONDS + 10) * 1000)
    expect(badge).to_have_class(re.compile(r"\bstate-completed\b"))
    expect(page.locator("#run-live-status")).to_contain_text("The run has finished (completed)")
    assert page.evaluate("window.drawnOnce") is True
    # Every line once, in the order written: the page's offset neither skipped nor repeated any.
    slept = [f"slept {n:.1f}s of {SLEEP_SECONDS:.1f}s" for n in range(1, SLEEP_SECONDS + 1)]
    expect(lines).to_have_text(slept)
    expect(bar).to_have_js_property("value", 1)
    expect(page.locator("#run-progress-text")).to_have_text(re.compile(r"^100%"))
    # The controls drawn for a running run (cancel, pause) no longer hold: disabled, and the
    # title names the state it ended in.
    expect(page.locator("button.run-control")).not_to_have_count(0)
    for button in page.locator("button.run-control").all():
        expect(button).to_be_disabled()
    expect(page).to_have_title(re.compile(r"\(completed\)"))

    # Polling stopped: the status above is written from the answer that said finished, and then
    # a minute of the page's time passes at once (every timer due in it fires, the slowest
    # poll's 15 s included) without one more fetch of /live/.
    fetches = page.evaluate("window.liveFetches")
    assert fetches >= 2, fetches
    page.clock.run_for(60_000)
    assert page.evaluate("window.liveFetches") == fetches


def _fires(page: Page) -> list[dt.datetime]:
    stamps = page.locator("#schedule-preview li.next-fire > time").evaluate_all(
        "times => times.map(time => time.getAttribute('datetime'))"
    )
    return [dt.datetime.fromisoformat(stamp) for stamp in stamps]


def _assert_quarter_hours(fires: list[dt.datetime], offset: dt.timedelta, since: dt.datetime) -> None:
    """Ten fires a quarter of an hour apart in the zone of `offset`, from the first quarter
    after the preview was asked for (after `since`, and now at the latest)."""
    assert len(fires) == 10, fires
    assert all(fire.utcoffset() == offset for fire in fires), fires
    assert all(fire.minute % 15 == 0 and fire.second == 0 for fire in fires), fires
    assert [later - earlier for earlier, later in itertools.pairwise(fires)] == [dt.timedelta(minutes=15)] * 9
    now = timezone.now()
    assert since < fires[0] <= now + dt.timedelta(minutes=15), (since, now, fires[0])


def test_the_schedule_editor_shows_the_next_fire_times_as_the_timing_is_typed(
    signed_in_page: Page, make_task: Callable[..., Task]
) -> None:
    page = signed_in_page
    task = make_task(name="report")
    page.goto(f"{ADMIN}/schedule/add/")
    page.locator("#id_task").select_option(label=task.name)
    box = page.locator("#schedule-preview")
    cron = page.locator("#id_cron")
    fires = box.locator("li.next-fire")
    expect(fires).to_have_count(0)  # nothing to preview yet
    typed = timezone.now()

    cron.press_sequentially("*/15 * * * *")

    expect(fires).to_have_count(10)
    expect(box.locator(".schedule-description")).to_have_text(re.compile(r"\b15\b"))
    expect(box.locator(".schedule-zone")).to_have_text("UTC")
    expect(box).not_to_have_class(re.compile(r"\bstale\b"))
    _assert_quarter_hours(_fires(page), dt.timedelta(0), typed)

    cron.fill("")
    cron.press_sequentially("61 * * * *")

    errors = page.locator("ul.preview-errors#cron-preview-errors")
    expect(errors).to_contain_text("minute field")
    expect(errors).to_contain_text("61")
    expect(box).to_have_class(re.compile(r"\bstale\b"))
    expect(fires).to_have_count(10)  # the last accepted expression's, marked stale

    cron.fill("")
    cron.press_sequentially("*/15 * * * *")

    expect(page.locator(".preview-errors")).to_have_count(0)
    expect(box).not_to_have_class(re.compile(r"\bstale\b"))

    typed = timezone.now()
    page.locator("#id_timezone").fill("Asia/Kolkata")

    expect(box.locator(".schedule-zone")).to_have_text("Asia/Kolkata")
    expect(fires.first.locator("time")).to_have_attribute("datetime", re.compile(r"\+05:30$"))
    expect(fires.first.locator("time")).to_have_text(re.compile(r" \+05:30$"))
    _assert_quarter_hours(_fires(page), dt.timedelta(hours=5, minutes=30), typed)
