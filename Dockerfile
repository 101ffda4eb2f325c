# kiln: the CLI, the controller daemon (`kiln controller`) and the image workflow steps run in.
#   docker build -t REGISTRY/kiln:0.1.0 .            (extras: --build-arg KILN_EXTRAS=all,postgres)
FROM python:3.11-slim

ARG KILN_EXTRAS=all,postgres
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# git: the controller clones the GitOps repository and DVC versions data in it.
RUN apt-get update \
 && apt-get install -y --no-install-recommends git ca-certificates \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/kiln
COPY pyproject.toml setup.py README.md ./
COPY kiln ./kiln
COPY controller ./controller
COPY runners ./runners
COPY algorithms ./algorithms
COPY labeling ./labeling
COPY bento ./bento
COPY schemas ./schemas
RUN pip install ".[${KILN_EXTRAS}]"

# Non-root, with a writable home for git, DVC and BentoML caches (the Helm chart mounts one there).
RUN groupadd --gid 10001 kiln \
 && useradd --uid 10001 --gid kiln --home-dir /var/lib/kiln --create-home --shell /usr/sbin/nologin kiln
USER 10001:10001
WORKDIR /var/lib/kiln
ENV HOME=/var/lib/kiln

EXPOSE 8080
ENTRYPOINT ["kiln"]
CMD ["--help"]
