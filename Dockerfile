# CPU image of the detector service. Build: docker build -t dnd-detector .
# Packages come from the package source pip is configured with (the base image's pip configuration); to use another
# one, pass pip's own variables as build arguments, none of which has a default:
#   docker build --build-arg PIP_INDEX_URL=<your index> [--build-arg TORCH_INDEX=<index with CPU torch wheels>] ...
# Where public images cannot be pulled, pass a base image the operator provides (python3.11 with pip and venv), e.g.
# the one deploy/base-image.sh imports from a Debian root file system: --build-arg BASE_IMAGE=dnd-base:bookworm
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_FIND_LINKS
ARG PIP_NO_INDEX
ARG PIP_TRUSTED_HOST
ARG TORCH_INDEX
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
WORKDIR /app
COPY deploy/pip-install.sh /usr/local/bin/pip-install
RUN python3 -m venv /opt/venv \
 && pip-install --torch torch==2.14.1 torchvision==0.29.1 \
 && pip-install --upgrade pip setuptools
COPY pyproject.toml README.md ./
COPY detector ./detector
COPY dnd ./dnd
RUN pip-install .
COPY models/resnet20-decoupled ./models/resnet20-decoupled
RUN useradd --create-home dnd && chown -R dnd /app
USER dnd
ENV DND_MODEL_DIR=/app/models/resnet20-decoupled
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3).status != 200)"
CMD ["dnd", "serve", "--host", "0.0.0.0", "--port", "8000"]
