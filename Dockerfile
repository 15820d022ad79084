FROM python:3.11-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends default-libmysqlclient-dev pkg-config build-essential \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY requirements/ requirements/
RUN pip install --no-cache-dir -r requirements/base.txt
COPY . .
ENV DJANGO_SETTINGS_MODULE=scheduler_site.settings PYTHONUNBUFFERED=1
RUN SECRET_KEY=build-only-secret-key-build-only-secret python manage.py collectstatic --no-input
