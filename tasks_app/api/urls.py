from __future__ import annotations

from django.urls import path
from rest_framework.routers import DefaultRouter

from tasks_app.api.views import (
    AlertRuleViewSet,
    AlertViewSet,
    ChannelViewSet,
    HandlerList,
    RunViewSet,
    ScheduleViewSet,
    TaskViewSet,
    WorkerViewSet,
    WorkflowRunViewSet,
    WorkflowViewSet,
)

router = DefaultRouter(trailing_slash=True)
router.register("tasks", TaskViewSet, basename="task")
router.register("runs", RunViewSet, basename="run")
router.register("schedules", ScheduleViewSet, basename="schedule")
router.register("workflows", WorkflowViewSet, basename="workflow")
router.register("workflow-runs", WorkflowRunViewSet, basename="workflow-run")
router.register("workers", WorkerViewSet, basename="worker")
router.register("channels", ChannelViewSet, basename="channel")
router.register("alert-rules", AlertRuleViewSet, basename="alert-rule")
router.register("alerts", AlertViewSet, basename="alert")

urlpatterns = [path("handlers/", HandlerList.as_view(), name="handler-list"), *router.urls]
