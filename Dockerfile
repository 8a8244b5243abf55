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
HEALTHCHECK --interval=10s --timeout=3s \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8025/api/v1/health', timeout=2)"]
CMD ["fakesmtp", "serve", "--host", "0.0.0.0", "--port", "1025", "--api-port", "8025"]
