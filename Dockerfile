# image-proxy-webhook: runs as a non-root user on a read-only root filesystem
# (the chart mounts the config, license and TLS files; /tmp is an emptyDir).
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY webhook ./webhook
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
COPY --from=build /install /usr/local
RUN useradd --system --uid 65532 --no-create-home --shell /usr/sbin/nologin webhook
USER 65532:65532
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
EXPOSE 8443 8080
ENTRYPOINT ["image-proxy-webhook"]
CMD ["serve", "--config", "/etc/image-proxy-webhook/config.yaml", "--log-format", "json"]
