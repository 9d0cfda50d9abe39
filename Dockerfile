# CPU image of the detector service. Build: docker build -t dnd-detector .
# Where the public registries cannot be reached, pass a base image the operator provides (it needs python3.11 with
# pip and venv; e.g. one imported from a Debian bookworm root file system) and a torch wheel index it can reach:
#   docker build --build-arg BASE_IMAGE=dnd-base --build-arg TORCH_INDEX=http://wheels.internal/simple -t dnd-detector .
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}
# the CPU wheels of torch (the default PyPI wheel bundles CUDA, ~2 GB more); PIP_INDEX: everything else
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG PIP_INDEX=https://pypi.org/simple
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PATH=/opt/venv/bin:$PATH
WORKDIR /app
RUN python3 -m venv /opt/venv \
 && pip install --index-url "${TORCH_INDEX}" torch==2.14.1 torchvision==0.29.1 \
 && pip install --index-url "${PIP_INDEX}" --upgrade pip setuptools
COPY pyproject.toml README.md ./
COPY detector ./detector
COPY training ./training
COPY service ./service
COPY dnd ./dnd
RUN pip install --index-url "${PIP_INDEX}" .
COPY models/resnet20-decoupled ./models/resnet20-decoupled
RUN useradd --create-home dnd && chown -R dnd /app
USER dnd
ENV DND_MODEL_DIR=/app/models/resnet20-decoupled
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
  CMD python3 -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3).status != 200)"
CMD ["dnd", "serve", "--host", "0.0.0.0", "--port", "8000"]
