from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission, DjangoModelPermissions

APP = "tasks_app"


def perm(codename: str) -> str:
    return f"{APP}.{codename}"


class ModelPermissions(DjangoModelPermissions):
    """Django's model permissions, reads included: GET needs the model's `view` permission.

    A viewset names what its actions need in `action_permissions` (action -> codenames);
    an action not named there needs what its HTTP method does. Whatever makes runs (a
    submission, a schedule's fire or edit, a workflow's start) needs `add_run` as well.
    """

    perms_map = {
        **DjangoModelPermissions.perms_map,
        "GET": ["%(app_label)s.view_%(model_name)s"],
        "OPTIONS": ["%(app_label)s.view_%(model_name)s"],
        "HEAD": ["%(app_label)s.view_%(model_name)s"],
    }

    def has_permission(self, request: Any, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        if getattr(view, "_ignore_model_permissions", False):  # DRF's API root: links only
            return True
        named = getattr(view, "action_permissions", {}).get(getattr(view, "action", None))
        if named is not None:
            return request.user.has_perms([perm(codename) for codename in named])
        queryset = getattr(view, "queryset", None)
        if queryset is None:
            return False
        return request.user.has_perms(self.get_required_permissions(request.method, queryset.model))


class CanReadSomething(BasePermission):
    """A signed-in user with a view permission on at least one of the platform's models:
    the API's schema and its documentation are no more public than the API."""

    def has_permission(self, request: Any, view: Any) -> bool:
        user = request.user
        return bool(
            user
            and user.is_authenticated
            and any(p.startswith(f"{APP}.view_") for p in user.get_all_permissions())
        )


def requires(*codenames: str) -> type[BasePermission]:
    """A permission class for a plain view: a signed-in user with every one of `codenames`."""

    class Requires(BasePermission):
        def has_permission(self, request: Any, view: Any) -> bool:
            user = request.user
            return bool(user and user.is_authenticated and user.has_perms([perm(c) for c in codenames]))

    Requires.__name__ = Requires.__qualname__ = f"Requires({', '.join(codenames)})"
    return Requires
