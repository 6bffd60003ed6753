# The wheel is built where a C compiler is (the core compiled by Cython, setup.py); the image has none.
FROM python:3.11-slim AS build
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY journey ./journey
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels && journey --version
# a fixed, numeric user and group (10001): Kubernetes' runAsNonRoot can only verify a numeric USER, and
# deploy/kubernetes runs as this UID (runAsUser) with fsGroup 10001 owning the data volume
RUN groupadd --gid 10001 journey && useradd --create-home --uid 10001 --gid 10001 journey \
    && mkdir -p /var/lib/journey && chown 10001:10001 /var/lib/journey
USER 10001:10001
CMD ["journey", "worker"]
