# The mediasan image: the worker, the sweeper's beat and the API run from it (compose.yaml).
FROM python:3.11-slim-bookworm
RUN apt-get update && apt-get install -y --no-install-recommends ffmpeg && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY worker worker
COPY tasks tasks
COPY fixtures fixtures
RUN pip install --no-cache-dir .
USER nobody
# `docker run mediasan` alone checks its surroundings; compose's `bootstrap` adds --migrate --create-buckets
CMD ["mediasan", "doctor"]
