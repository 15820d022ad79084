from __future__ import annotations

import gc
import os
from importlib import import_module

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "scheduler_site.settings")

application = get_wsgi_application()

# What loading left (Django, the URLconf and every view it imports) lives as long as the
# process: frozen, the collector never scans it again. A full collection of a loaded process
# took 60-120 ms here, long enough to be a request's p99; after the freeze, 1.4 ms
# (bench/history.py measures the lists the same way).
import_module(settings.ROOT_URLCONF)
gc.freeze()
