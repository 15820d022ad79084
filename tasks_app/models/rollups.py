from __future__ import annotations

from django.db import models

from tasks_app.choices import RunState

# The upper bounds (seconds) of the duration and lateness histograms: Prometheus' "le" buckets,
# the last one +Inf. A rollup keeps cumulative counts, one per bound, so rows add up.
DURATION_BOUNDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, float("inf"))
LATENESS_BOUNDS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, float("inf"))
# Their columns: d0 .. d14 count durations up to each bound, l0 .. l10 lateness. Columns, not
# a JSON list, so the dashboard sums a week of rows in the database (bench/console.py).
DURATION_COLUMNS = tuple(f"d{i}" for i in range(len(DURATION_BOUNDS)))
LATENESS_COLUMNS = tuple(f"l{i}" for i in range(len(LATENESS_BOUNDS)))


class Grain(models.IntegerChoices):
    """The length of a rollup's bucket, in seconds."""

    FIVE_MINUTES = 300, "5 minutes"
    HOUR = 3600, "an hour"


class RunRollup(models.Model):
    """Finished runs counted per bucket of finish time, task, worker and final state.

    What the console's dashboard reads instead of the runs table, as XXL-JOB keeps a daily
    report: tasks_app.rollups recomputes the buckets that can still change, and a pruned run
    stays counted. A histogram is cumulative counts per bound, Prometheus' way.
    """

    grain = models.PositiveIntegerField(choices=Grain.choices)
    bucket = models.DateTimeField()  # the bucket's start
    task = models.ForeignKey("tasks_app.Task", on_delete=models.CASCADE, related_name="+")
    worker = models.CharField(max_length=255, blank=True)  # "" for runs no worker started
    state = models.CharField(max_length=10, choices=RunState.choices)
    count = models.PositiveIntegerField(default=0)
    duration_sum = models.FloatField(default=0)  # seconds, of the runs that started
    last_run = models.PositiveBigIntegerField(null=True, blank=True)  # the newest run counted
    last_error = models.CharField(max_length=500, blank=True)  # its error, for failed runs

    class Meta:
        constraints = [
            # rollups.refresh() replaces a bucket whole; the dashboard reads buckets by range.
            models.UniqueConstraint(
                fields=["grain", "bucket", "task", "worker", "state"], name="rollup_one_per_bucket"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.count} {self.state} run(s) of task {self.task_id} from {self.bucket:%Y-%m-%d %H:%M}"

    @property
    def durations(self) -> list[int]:
        return [getattr(self, column) for column in DURATION_COLUMNS]

    @property
    def lateness(self) -> list[int]:
        return [getattr(self, column) for column in LATENESS_COLUMNS]


for _column in (*DURATION_COLUMNS, *LATENESS_COLUMNS):
    RunRollup.add_to_class(_column, models.PositiveIntegerField(default=0))


class RollupProgress(models.Model):
    """How far the rollups are complete: one row, locked by the beat that refreshes them."""

    name = models.CharField(max_length=50, primary_key=True)
    upto = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} up to {self.upto}"
