from __future__ import annotations

from django.conf import settings
from rest_framework.throttling import SimpleRateThrottle


class SubmitThrottle(SimpleRateThrottle):
    """Submissions (POST /runs/, /runs/bulk/) per user, at SUBMIT_THROTTLE_RATE."""

    scope = "submit"

    def get_rate(self) -> str:
        return settings.SUBMIT_THROTTLE_RATE

    def get_cache_key(self, request, view) -> str:  # type: ignore[no-untyped-def]
        ident = request.user.pk if request.user and request.user.is_authenticated else self.get_ident(request)
        return self.cache_format % {"scope": self.scope, "ident": ident}
