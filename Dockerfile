# CPU-only image of the detector service. Build: docker build -t dnd-detector .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
# CPU wheels of torch (the default PyPI wheel bundles CUDA, ~2 GB more)
RUN pip install torch==2.14.1 torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY detector ./detector
COPY training ./training
COPY service ./service
RUN pip install .
COPY models/resnet20-decoupled ./models/resnet20-decoupled
RUN useradd --create-home dnd && chown -R dnd /app
USER dnd
ENV DND_MODEL_DIR=/app/models/resnet20-decoupled
EXPOSE 8000
CMD ["dnd", "serve", "--host", "0.0.0.0", "--port", "8000"]
