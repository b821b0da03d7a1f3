# The streamscore service image (used by docker-compose.yml's "scorer").
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Dependencies in a layer of their own, from pyproject.toml alone: a change to the code
# reuses it instead of reinstalling every dependency.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY README.md ./
COPY src ./src
RUN pip install --no-deps . && useradd --system --uid 10001 --no-create-home streamscore

USER streamscore
# Inside a container the HTTP server must listen beyond loopback to be scraped and probed.
ENV STREAMSCORE_METRICS_HOST=0.0.0.0 \
    STREAMSCORE_METRICS_PORT=9108
EXPOSE 9108
# Liveness: the loop is not stuck (GET /healthz). No curl in the image: a stdlib probe.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-m", "streamscore.probe", "healthz"]
CMD ["streamscore", "run"]
