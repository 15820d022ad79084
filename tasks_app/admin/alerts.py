"""Channels (with their test), alert rules and alerts (read-only, with their timeline and notifications)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, path, reverse

from tasks_app import notifications
from tasks_app.admin.common import (
    ChangedFieldsOnly,
    ReadOnlyInline,
    SeenValuesForm,
    at_seconds,
)
from tasks_app.choices import NotificationState
from tasks_app.models import (
    Alert,
    AlertEvent,
    AlertRule,
    Channel,
    Notification,
    Schedule,
)
from tasks_app.models.alerts import rule_problems

# --- alerts ----------------------------------------------------------------------------


class SecretField(forms.CharField):
    """A secret that is written, never shown: the input starts empty each time, and an empty
    one keeps what is stored."""

    widget = forms.PasswordInput(render_value=False)

    def has_changed(self, initial: Any, data: Any) -> bool:
        return bool(data)


class ChannelForm(SeenValuesForm):
    secret = SecretField(
        required=False,
        strip=False,  # the key as typed: the receiver computes the HMAC with it
        max_length=255,
        help_text="The HMAC-SHA256 key of a webhook's X-Scheduler-Signature. Empty: no signature.",
    )

    class Meta:
        model = Channel
        fields = ["name", "kind", "target", "secret", "enabled"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Neither as the input's value nor as its hidden initial: never into the page.
        self.initial.pop("secret", None)
        self.fields["secret"].show_hidden_initial = False
        if self.instance.secret:
            self.fields["secret"].help_text = "A secret is set: leave this empty to keep it, or type another."

    def clean_secret(self) -> str:
        return self.cleaned_data["secret"] or self.instance.secret

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        named = {"kind", "target"} & set(self.changed_data)
        if self.instance.pk and not named:
            # As in the API: a host since dropped from the allowlist still lets the channel be
            # renamed or disabled.
            return data
        # What will be stored: the row as it is now, with the fields the operator changed.
        now = {"kind": self.instance.kind, "target": self.instance.target, **{f: data.get(f) for f in named}}
        kind, target = now["kind"], now["target"]
        if kind and target:
            problem = notifications.target_problem(kind, target)
            if problem:
                self.add_error("target", problem)
        return data


@admin.register(Channel)
class ChannelAdmin(ChangedFieldsOnly, admin.ModelAdmin):
    form = ChannelForm
    change_form_template = "tasks_app/admin/channel_change_form.html"
    list_display = ["name", "kind", "target", "enabled", "last_error"]
    list_filter = ["enabled", "kind"]
    search_fields = ["name", "target"]
    readonly_fields = ["last_error", "last_error_at_seconds"]
    actions = ["send_test"]

    def save_model(self, request: HttpRequest, obj: Channel, form: Any, change: bool) -> None:
        if change and "enabled" in form.changed_data and obj.enabled:
            # A channel enabled again starts clean: the error that disabled it is history.
            obj.last_error, obj.last_error_at = "", None
            obj.save(update_fields=[*form.changed_data, "last_error", "last_error_at", "updated_at"])
            obj.refresh_from_db()
            return
        super().save_model(request, obj, form, change)

    def get_fields(self, request: HttpRequest, obj: Channel | None = None) -> Any:
        fields = super().get_fields(request, obj)
        if obj is not None and not self.has_change_permission(request, obj):
            # A view-only page shows each field's stored value: the secret's would be in clear.
            fields = ["secret_text" if field == "secret" else field for field in fields]
        return fields

    @admin.display(description="secret")
    def secret_text(self, channel: Channel) -> str:
        return "a secret is set" if channel.secret else "none: deliveries are not signed"

    @admin.display(description="last error at")
    def last_error_at_seconds(self, channel: Channel) -> str:
        return at_seconds(channel.last_error_at)

    def get_urls(self) -> list[URLPattern]:
        test = self.admin_site.admin_view(self.send_test_view)  # signed in, staff, CSRF-checked
        return [path("<path:object_id>/test/", test, name="tasks_app_channel_test"), *super().get_urls()]

    def send_test_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """The change page's "Send a test" button."""
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        channel = self.get_object(request, unquote(object_id))
        if channel is None:
            raise Http404
        if not self.has_change_permission(request, channel):  # a test can disable the channel
            raise PermissionDenied
        self._test(request, channel)
        return HttpResponseRedirect(reverse("admin:tasks_app_channel_change", args=[channel.pk]))

    @admin.action(description="Send a test notification", permissions=["change"])
    def send_test(self, request: HttpRequest, queryset: QuerySet[Channel]) -> None:
        for channel in queryset:
            self._test(request, channel)

    def _test(self, request: HttpRequest, channel: Channel) -> None:
        was_enabled = channel.enabled
        notification = notifications.send_test(channel)  # no transaction held: it waits on the receiver
        channel.refresh_from_db()
        if notification.state == NotificationState.SENT:
            self.message_user(request, f"Test of channel {channel.name}: delivered.", messages.SUCCESS)
            return
        disabled = (
            " The channel was disabled: fix its target, then enable it again."
            if was_enabled and not channel.enabled
            else ""
        )
        self.message_user(
            request,
            f"Test of channel {channel.name}: not delivered: {notification.last_error}.{disabled}",
            messages.ERROR,
        )


class AlertRuleForm(SeenValuesForm):
    class Meta:
        model = AlertRule
        fields = [*AlertRule.EDITABLE_FIELDS, "channels"]

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        # The API's rule, on the row as it is now with the fields the operator changed (the
        # admin writes no others).
        if self.instance.pk:
            stored = {field: getattr(self.instance, field) for field in AlertRule.EDITABLE_FIELDS}
            data_now = {**stored, **{field: data.get(field) for field in self.changed_data}}
        else:
            data_now = data
        for field, problem in rule_problems(data_now).items():
            if field not in self.errors:  # a value refused already is not also missing
                self.add_error(field if field in self.fields else None, problem)
        return data


@admin.register(AlertRule)
class AlertRuleAdmin(admin.ModelAdmin):
    form = AlertRuleForm
    list_display = ["name", "condition", "scope", "enabled", "channel_names"]
    list_filter = ["enabled", "condition"]
    search_fields = ["name"]
    filter_horizontal = ["channels"]

    def get_queryset(self, request: HttpRequest) -> QuerySet[AlertRule]:
        return super().get_queryset(request).select_related("task", "workflow").prefetch_related("channels")

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "schedule":  # each schedule's name says what it fires
            kwargs["queryset"] = Schedule.objects.select_related("task", "workflow")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    @admin.display(description="scope")
    def scope(self, rule: AlertRule) -> str:
        return rule.scope_text

    @admin.display(description="channels")
    def channel_names(self, rule: AlertRule) -> str:
        return ", ".join(channel.name for channel in rule.channels.all()) or "-"

    # As ChangedFieldsOnly: an edit writes only what the operator changed. The channels are
    # rows of their own table (save_related), not a column.
    def save_model(self, request: HttpRequest, obj: AlertRule, form: Any, change: bool) -> None:
        if not change:
            obj.save()
            return
        columns = [field for field in form.changed_data if field != "channels"]
        if columns:
            obj.save(update_fields=[*columns, "updated_at"])
        obj.refresh_from_db()

    def save_related(self, request: HttpRequest, form: Any, formsets: Any, change: bool) -> None:
        if not change or "channels" in form.changed_data:
            form.instance.channels.set(form.cleaned_data["channels"])
        for formset in formsets:
            self.save_formset(request, form, formset, change)


class OfTheAlert:
    """An inline of an alert's own rows (its timeline, its notifications): seen by whoever may
    view the alert, changed by no one."""

    def has_view_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return request.user.has_perm("tasks_app.view_alert")


class AlertEventInline(OfTheAlert, ReadOnlyInline):
    model = AlertEvent
    verbose_name_plural = "timeline"
    fields = ["at_seconds", "kind", "reason"]
    readonly_fields = fields

    @admin.display(description="at")
    def at_seconds(self, event: AlertEvent) -> str:
        return at_seconds(event.at)


class NotificationInline(OfTheAlert, ReadOnlyInline):
    model = Notification
    fk_name = "alert"
    fields = ["channel", "event", "state", "attempts", "last_error", "sent_at_seconds", "delivery_id"]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Notification]:
        return super().get_queryset(request).select_related("channel")

    @admin.display(description="event")
    def event(self, notification: Notification) -> str:
        return notification.kind

    @admin.display(description="sent at")
    def sent_at_seconds(self, notification: Notification) -> str:
        return at_seconds(notification.sent_at)


@admin.register(Alert)
class AlertAdmin(admin.ModelAdmin):
    """Read-only: alerts are opened and resolved by tasks_app.alerts alone."""

    list_display = ["subject", "rule", "condition", "state", "opened", "resolved", "downtime_text"]
    list_filter = ["state", "rule", "rule__condition"]
    list_select_related = ["rule"]
    search_fields = ["subject", "reason"]
    ordering = ["-opened_at", "-id"]
    fields = [
        "rule", "condition", "subject", "state", "reason", "resolution", "opened", "resolved",
        "downtime_text", "run", "task", "schedule", "scheduled_for_seconds", "remind_at_seconds",
    ]  # fmt: skip
    readonly_fields = fields
    inlines = [AlertEventInline, NotificationInline]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # resolved alerts are pruned by retention

    @admin.display(description="condition", ordering="rule__condition")
    def condition(self, alert: Alert) -> str:
        return alert.rule.condition

    @admin.display(description="opened at", ordering="opened_at")
    def opened(self, alert: Alert) -> str:
        return at_seconds(alert.opened_at)

    @admin.display(description="resolved at", ordering="resolved_at")
    def resolved(self, alert: Alert) -> str:
        return at_seconds(alert.resolved_at)

    @admin.display(description="downtime")
    def downtime_text(self, alert: Alert) -> str:
        downtime = alert.downtime
        return "-" if downtime is None else str(dt.timedelta(seconds=round(downtime)))

    @admin.display(description="scheduled for")
    def scheduled_for_seconds(self, alert: Alert) -> str:
        return at_seconds(alert.scheduled_for)

    @admin.display(description="next reminder at")
    def remind_at_seconds(self, alert: Alert) -> str:
        return at_seconds(alert.remind_at)
