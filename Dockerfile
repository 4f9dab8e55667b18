# mitmflare: the proxy and its Datasette dashboard in one container (`mitmflare run`).
#   docker build -t mitmflare .
#   docker compose up          (see docker-compose.yml: keys and a dashboard password required)
FROM python:3.13-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    MITMFLARE_HOST=0.0.0.0 \
    MITMFLARE_ACCOUNTS=/config/accounts.yaml \
    MITMFLARE_DB=/data/mitmflare.db \
    MITMFLARE_STATE=/data/mitmflare-state.db

WORKDIR /app
COPY pyproject.toml constraints.txt README.md datasette-metadata.yml ./
COPY addons ./addons
COPY config/accounts.example.yaml ./config/
COPY datasette-assets ./datasette-assets
# editable install: the package keeps finding the bundle, metadata and assets beside it
RUN pip install -c /app/constraints.txt -e /app \
    && useradd --create-home --uid 10001 mitmflare \
    && mkdir -p /config /data && chown mitmflare /config /data

USER mitmflare
WORKDIR /data
VOLUME ["/config", "/data"]
EXPOSE 8080 8001
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s \
  CMD python -c "import sys, httpx; sys.exit(httpx.get('http://127.0.0.1:8080/health', timeout=4).status_code != 200)"
CMD ["mitmflare", "run", "--set", "flare_require_access_keys=true"]
