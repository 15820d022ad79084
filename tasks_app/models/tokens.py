from __future__ import annotations

from rest_framework.authtoken.models import TokenProxy


class ApiToken(TokenProxy):
    """DRF's API token as the admin shows it: never its key in clear.

    A token's own __str__ is its key, and the admin writes an object's __str__ into page
    titles, delete confirmations and its history.
    """

    class Meta:
        proxy = True
        verbose_name = "API token"

    def __str__(self) -> str:
        return f"token of {self.user} ({self.masked_key})"

    @property
    def masked_key(self) -> str:
        return f"{self.key[:4]}…" if self.key else "-"
