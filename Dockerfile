# ketamine-cds: the CDS Hooks service under gunicorn, as a non-root container.
#
# Base image: pinned by tag and overridable with --build-arg BASE_IMAGE=...
# - python:3.12-slim is the production default. The code supports Python 3.11+ (requires-python).
# - CI cannot reach a registry. .ci/container-smoke.sh builds from a local Debian bookworm base made
#   with debootstrap, and that base has Python 3.11.2. So CI (host tests and container) exercises 3.11,
#   and the 3.12 default is not exercised here. Keep the code working on both. For exact parity with
#   CI, build with --build-arg BASE_IMAGE=python:3.11-slim-bookworm.
# - The tag is the pin. Add a digest (python:3.12-slim@sha256:...) if your registry policy asks for one.
# - Both stages use the same base, so the wheels built in the first stage match the second stage's
#   interpreter.
ARG BASE_IMAGE=python:3.12-slim

# ---- builder: the project wheel plus wheels for every runtime dependency ---------------------------------
FROM ${BASE_IMAGE} AS builder

# Optional CA bundle for pip. Pass it at build time only, e.g. behind a TLS-intercepting proxy, with the
# bundle mounted as a build volume. It is an ARG, so it is not kept in the image's environment.
ARG PIP_CERT

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Dependencies first, from pyproject.toml alone, on a stub package. This layer stays cached until
# pyproject.toml changes, so a code change does not download the dependencies again. hatchling is
# installed here (same range as [build-system] in pyproject.toml) and both builds skip build
# isolation, so the second pip wheel needs no network.
COPY pyproject.toml ./
RUN python3 -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir "hatchling>=1.25,<2" \
    && mkdir -p cds hooks rules fhir_profiles \
    && touch README.md cds/__init__.py \
    && /opt/build/bin/pip wheel --no-cache-dir --no-build-isolation --wheel-dir /wheels/deps . \
    && rm -rf /wheels/deps/ketamine_cds-*.whl README.md cds hooks rules fhir_profiles \
    && sha256sum /wheels/deps/*.whl > /wheels/deps.sha256

# The project's own wheel. It carries hooks/, rules/ and fhir_profiles/ inside the package as
# cds/_knowledge. The runtime dependencies are in /wheels/deps already; the [test] extra is not.
COPY README.md ./
COPY cds ./cds
COPY hooks ./hooks
COPY rules ./rules
COPY fhir_profiles ./fhir_profiles
RUN /opt/build/bin/pip wheel --no-cache-dir --no-build-isolation --no-deps --wheel-dir /wheels/app . \
    && sha256sum /wheels/app/*.whl > /wheels/app.sha256

# ---- runtime: only the wheel and its dependencies, in a venv, as uid 10001 -------------------------------
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    KETAMINE_CDS_DATABASE_URL=sqlite:////app/data/ketamine-cds.sqlite3 \
    KETAMINE_CDS_OUTBOX_DIR=/app/data/outbox \
    KETAMINE_CDS_WORK_DIR=/tmp \
    XDG_RUNTIME_DIR=/run/ketamine-cds \
    HEALTHCHECK_PORT=8080

# The wheels are bind-mounted from the builder for the RUN steps only, so they take no space in the
# image. Installing with --no-index means this stage needs neither network nor PIP_CERT.
#
# Each RUN comes after a COPY of a checksum list of its wheels. buildah (1.28) does not count a bind
# mount's content in its layer cache, so without the list it would reuse a stale install after the
# wheels change. The COPY is keyed on content. The lists also stay in the image as a record of
# exactly what is installed.
COPY --from=builder /wheels/deps.sha256 /opt/ketamine-cds/deps-wheels.sha256
RUN --mount=type=bind,from=builder,source=/wheels/deps,target=/tmp/wheels \
    python3 -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels /tmp/wheels/*.whl \
    && groupadd --gid 10001 app \
    && useradd --uid 10001 --gid app --home-dir /app --no-create-home --shell /usr/sbin/nologin app \
    && mkdir -p /app/data /run/ketamine-cds \
    && chown 10001:10001 /app/data /run/ketamine-cds \
    && chmod 0700 /run/ketamine-cds

# The service itself: a small layer, the only one rebuilt after a code change.
COPY --from=builder /wheels/app.sha256 /opt/ketamine-cds/app-wheel.sha256
RUN --mount=type=bind,from=builder,source=/wheels,target=/tmp/wheels \
    /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /tmp/wheels/deps /tmp/wheels/app/ketamine_cds-*.whl

# The service can write to only these places (the root filesystem may be mounted read-only):
# - /app/data holds the SQLite feedback store and the outbox (records waiting for the database). Mount a
#   volume there to keep them across restarts, or set KETAMINE_CDS_DATABASE_URL to PostgreSQL.
# - /tmp ($KETAMINE_CDS_WORK_DIR): temporary files, gunicorn's heartbeat files, the metrics directory
#   (an emptyDir under Kubernetes; see deploy/).
# - /run/ketamine-cds ($XDG_RUNTIME_DIR) holds gunicorn's control socket (newer gunicorn has one), mode 0600.
#   Without it, gunicorn tries $HOME/.gunicorn (/app) and logs "Control server error: Permission denied".
WORKDIR /app
USER 10001:10001
EXPOSE 8080

# slim images have no curl, so the check uses Python. Set HEALTHCHECK_PORT if you change the --port in CMD.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('HEALTHCHECK_PORT', '8080'), timeout=4)"]

# Production mode by default. It refuses to start without KETAMINE_CDS_TRUSTED_ISSUERS and
# KETAMINE_CDS_PUBLIC_BASE_URL (see the README). For a local try-out, override the command:
#   podman run -p 8080:8080 IMAGE ketamine-cds serve --dev --host 0.0.0.0 --port 8080
CMD ["ketamine-cds", "serve", "--host", "0.0.0.0", "--port", "8080"]
