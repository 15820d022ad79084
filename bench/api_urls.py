from __future__ import annotations

from django.urls import path

from bench.bare.views import RowCreate, RowCreateAndSend
from scheduler_site.urls import urlpatterns as platform_urls

urlpatterns = [
    *platform_urls,
    path("bench/bare/", RowCreate.as_view()),
    path("bench/bare-delay/", RowCreateAndSend.as_view()),
]
