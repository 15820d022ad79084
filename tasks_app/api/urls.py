from __future__ import annotations

from rest_framework.routers import DefaultRouter

from tasks_app.api.views import (
    HandlerViewSet,
    RunViewSet,
    ScheduleViewSet,
    TaskViewSet,
    WorkerViewSet,
    WorkflowRunViewSet,
    WorkflowViewSet,
)

router = DefaultRouter(trailing_slash=True)
router.register("handlers", HandlerViewSet, basename="handler")
router.register("tasks", TaskViewSet, basename="task")
router.register("runs", RunViewSet, basename="run")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("workflow-runs", WorkflowRunViewSet, basename="workflow-run")
router.register("workers", WorkerViewSet, basename="worker")

urlpatterns = router.urls
