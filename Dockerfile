# fakesmtp in a container: the same `pip install .` as the README, served on all interfaces
# (inside a container, loopback would be unreachable from the service's users).
FROM python:3.11-slim

RUN useradd --create-home --uid 10001 fakesmtp
WORKDIR /src
COPY pyproject.toml README.md ./
COPY fakesmtp ./fakesmtp
COPY scenarios ./scenarios
RUN pip install --no-cache-dir . && rm -rf /src

USER 10001
WORKDIR /home/fakesmtp
EXPOSE 1025 8025
# The API answers other containers by the names given in FAKESMTP_SERVE_API_ALLOW_HOST (e.g. the
# service name, space-separated) and wants FAKESMTP_SERVE_API_TOKEN when that is set; the health
# check is the tool's own `wait-ready`, which sends the same token.
HEALTHCHECK --interval=10s --timeout=3s \
  CMD ["fakesmtp", "wait-ready", "--timeout", "2"]
# One console line per session: a container left running for hours should not log every
# command. FAKESMTP_SERVE_LOG=exchange brings back a line per exchange.
ENV FAKESMTP_SERVE_LOG=session
CMD ["fakesmtp", "serve", "--host", "0.0.0.0", "--port", "1025", "--api-port", "8025"]
