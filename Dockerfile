# image-proxy-webhook: runs as a non-root user (65532) on a read-only root filesystem,
# as the chart runs it (the chart mounts the config, license and TLS files; /tmp is
# an emptyDir). README "Building the image" says how to build and push it.
#
# BASE is any image with python3 (3.11 or later, with its venv module) and useradd,
# the same for both stages. The default is the official python:3.11-slim, pinned by
# the digest of its multi-arch index (Python 3.11.16 on Debian 13, 2026-08-25):
# update tag and digest together. Without a Docker engine, .ci/build-image passes a
# base made from Debian packages instead.
ARG BASE=python:3.11-slim@sha256:be1575ed968de893bd54f4c56315ff7c4736ce522c1bca08fd521731aafc0d76

# The dependencies, listed from pyproject.toml: the build stage copies only this
# list, so its dependency layer is rebuilt when they change, not with every edit of
# pyproject.toml or of the code.
FROM ${BASE} AS requirements
COPY pyproject.toml /src/
RUN python3 -c 'import tomllib; print("\n".join(tomllib.load(open("/src/pyproject.toml", "rb"))["project"]["dependencies"]))' \
        > /requirements.txt

FROM ${BASE} AS build
# A virtual environment at the path it runs from: its scripts and layout are the
# same whichever pip the base has (Debian's `pip install --prefix` writes under
# local/, the official images' does not).
ENV VIRTUAL_ENV=/opt/image-proxy-webhook
RUN python3 -m venv "$VIRTUAL_ENV"
ENV PATH=$VIRTUAL_ENV/bin:$PATH
WORKDIR /src
# Bytecode is compiled here, as unchecked-hash .pyc files: they stay valid whatever
# the files' times become between stages, and nothing is compiled (or written) on
# the read-only root at run time.
COPY --from=requirements /requirements.txt ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --disable-pip-version-check --no-compile -r requirements.txt \
    && python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash "$VIRTUAL_ENV"
COPY pyproject.toml README.md ./
COPY webhook ./webhook
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --disable-pip-version-check --no-compile --no-deps . \
    && python3 -m compileall -q --invalidation-mode unchecked-hash \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/webhook"

FROM ${BASE}
# The base's standard library compiled too (the official python images ship no
# bytecode); a base that has it up to date (Debian's python3) is left as it is.
RUN python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash \
        "$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')" \
    && groupadd --gid 65532 webhook \
    && useradd --uid 65532 --gid 65532 --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin webhook
COPY --from=build /opt/image-proxy-webhook /opt/image-proxy-webhook
ENV PATH=/opt/image-proxy-webhook/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 65532:65532
EXPOSE 8443 8080
ENTRYPOINT ["image-proxy-webhook"]
# The chart's own args, in the same order: --log-format is an option of the
# command, before "serve".
CMD ["--log-format", "json", "serve", "--config", "/etc/image-proxy-webhook/config.yaml"]
