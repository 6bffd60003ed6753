FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY journey ./journey
RUN pip install --no-cache-dir .
RUN useradd --create-home journey && mkdir -p /var/lib/journey && chown journey /var/lib/journey
USER journey
CMD ["journey", "worker"]
