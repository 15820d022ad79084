from __future__ import annotations

from typing import Any

from rest_framework.permissions import SAFE_METHODS, DjangoModelPermissions


class ModelPermissions(DjangoModelPermissions):
    """Reads need a signed-in user; writes need Django's model permission.

    A viewset's `change_actions` (run controls such as cancel) need the change
    permission although they are POSTs.
    """

    def has_permission(self, request: Any, view: Any) -> bool:
        if not request.user or not request.user.is_authenticated:
            return False
        if request.method in SAFE_METHODS:
            return True
        queryset = getattr(view, "queryset", None)
        if queryset is None:
            return False
        model = queryset.model
        if getattr(view, "action", None) in getattr(view, "change_actions", ()):
            perms = [f"{model._meta.app_label}.change_{model._meta.model_name}"]
        else:
            perms = self.get_required_permissions(request.method, model)
        return request.user.has_perms(perms)
