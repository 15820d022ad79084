from __future__ import annotations

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.api_settings")

# The platform's WSGI module, as gunicorn serves it (with bench.api_settings).
from scheduler_site.wsgi import application

__all__ = ["application"]
