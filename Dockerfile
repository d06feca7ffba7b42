# convserve: the image-classification model server.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    KERAS_HOME=/var/lib/convserve/keras \
    CONVSERVE_MODELS_DIR=/var/lib/convserve/models \
    CONVSERVE_DATA_DIR=/var/lib/convserve/data

WORKDIR /srv/convserve

# Dependencies in their own layer: it is rebuilt only when pyproject.toml changes.
COPY pyproject.toml README.md ./
RUN mkdir app && touch app/__init__.py \
    && pip install ".[server]" \
    && pip uninstall -y convserve \
    && rm -rf app build *.egg-info

COPY app ./app
RUN pip install --no-deps . && rm -rf build *.egg-info

# Run as an unprivileged user; the registry, job data and Keras' weight cache are volumes,
# so models and downloaded weights outlive the container.
RUN useradd --system --uid 10001 --home-dir /var/lib/convserve convserve \
    && mkdir -p /var/lib/convserve/models /var/lib/convserve/data /var/lib/convserve/keras \
    && chown -R convserve:convserve /var/lib/convserve
USER convserve
VOLUME ["/var/lib/convserve/models", "/var/lib/convserve/data", "/var/lib/convserve/keras"]

EXPOSE 8000
# The first start downloads ImageNet weights and writes version 1 of each model.
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]

CMD ["python", "-m", "app", "serve", "--host", "0.0.0.0", "--port", "8000"]
