"""Create the first admin user and its API token once, and print how to sign in."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create an admin user and an API token if none exists; print both credentials."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--username", default="admin")
        parser.add_argument(
            "--credentials-file",
            default=str(Path(settings.BASE_DIR) / "var" / "admin-credentials.json"),
            help="Where the generated password is kept (outside the repository).",
        )

    def handle(self, *args: Any, username: str, credentials_file: str, **options: Any) -> None:
        path = Path(credentials_file)
        User = get_user_model()
        user = User.objects.filter(username=username).first()
        if user is None:
            password = secrets.token_urlsafe(12)
            user = User.objects.create_superuser(username=username, email="", password=password)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps({"username": username, "password": password}))
            path.chmod(0o600)
        saved = json.loads(path.read_text()) if path.exists() else {}
        password = saved.get("password", "(set before; not known here)")
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(f"admin user: {username}  password: {password}")
        self.stdout.write(f"API token:  {token.key}")
