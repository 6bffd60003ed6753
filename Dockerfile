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
RUN useradd --create-home journey && mkdir -p /var/lib/journey && chown journey /var/lib/journey
USER journey
CMD ["journey", "worker"]
