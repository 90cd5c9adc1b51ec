#!/usr/bin/env bash
# Build the CPU image from docker/Dockerfile with podman, on a machine that cannot pull
# public base images: the base is a Debian bookworm root file system made from Debian's
# packages by mmdebstrap (the same thing as the Dockerfile's default debian:12.12-slim base).
# The host's pip configuration, CA bundle and local wheel/index directories are mounted
# read-only into the build (docker/pip_mounts.py); nothing of them stays in the image.
#
#   docker/build_image.sh                  # build (or reuse layers of) the image
#   VIDEO_KD_INSTALL_TOOLS=1 docker/build_image.sh   # apt-get install podman etc. first
#
# Environment: IMAGE (tag, default the components' image), BASE_IMAGE (skip mmdebstrap and
# use this base), TORCH_INDEX_URL, PYTHON (whose pip configuration is used), REBUILD_BASE=1,
# BUILD_LOG (keep the build's output there), DOCKERFILE (default docker/Dockerfile).
# Bad input or a failed build: one line `error: ...` on stderr, exit status 2.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${IMAGE:-ghcr.io/kubeflow-video-kd/video-kd:0.1.0}
LOCAL_BASE=localhost/video-kd-base:bookworm
DOCKERFILE=${DOCKERFILE:-docker/Dockerfile}
PYTHON=${PYTHON:-python3}
TOOLS=(podman runc mmdebstrap)
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/docker/containers.conf}

die() { echo "error: $*" >&2; exit 2; }

missing_tools() {
  local tool
  for tool in "${TOOLS[@]}"; do command -v "$tool" > /dev/null || echo "$tool"; done
}

ensure_tools() {
  local missing
  missing=$(missing_tools | tr '\n' ' ')
  [ -z "$missing" ] && return
  if [ "${VIDEO_KD_INSTALL_TOOLS:-0}" = 1 ] && command -v apt-get > /dev/null; then
    echo "installing ${missing}from Debian's packages" >&2
    apt-get update -qq > /dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman buildah runc mmdebstrap > /dev/null
    missing=$(missing_tools | tr '\n' ' ')
  fi
  [ -z "$missing" ] || die "no container engine: ${missing}not found (apt-get install podman runc mmdebstrap, or VIDEO_KD_INSTALL_TOOLS=1 $0)"
}

# The base: Debian bookworm minbase with the same apt sources as debian:12.12-slim.
ensure_base() {
  if [ -n "${BASE_IMAGE:-}" ]; then return; fi
  BASE_IMAGE=$LOCAL_BASE
  if [ "${REBUILD_BASE:-0}" != 1 ] && podman image exists "$BASE_IMAGE"; then return; fi
  local rootfs started=$SECONDS
  rootfs=$(mktemp -d)
  echo "making the base $BASE_IMAGE with mmdebstrap (Debian bookworm minbase)" >&2
  mmdebstrap --quiet --variant=minbase bookworm "$rootfs/rootfs.tar" \
    'deb http://deb.debian.org/debian bookworm main' \
    'deb http://deb.debian.org/debian bookworm-updates main' \
    'deb http://deb.debian.org/debian-security bookworm-security main' \
    || { rm -rf "$rootfs"; die "base image: mmdebstrap failed to make a bookworm root file system"; }
  podman import --quiet "$rootfs/rootfs.tar" "$BASE_IMAGE" > /dev/null \
    || { rm -rf "$rootfs"; die "base image: podman import failed"; }
  rm -rf "$rootfs"
  echo "base ready in $((SECONDS - started))s" >&2
}

# torch: the CPU wheel from the PyTorch index, unless pip's find-links on this host already
# hold it (then the host's index is asked, and pip takes the local +cpu wheel, the newer label).
torch_index() {
  if [ -n "${TORCH_INDEX_URL:-}" ]; then echo "$TORCH_INDEX_URL"; return; fi
  local links
  links=$("$PYTHON" -m pip config get global.find-links 2> /dev/null || true)
  links=${PIP_FIND_LINKS:-$links}
  if compgen -G "${links:-/nonexistent}/torch-2.13.0+cpu-*.whl" > /dev/null; then
    "$PYTHON" -m pip config get global.index-url 2> /dev/null || echo https://pypi.org/simple
  else
    echo https://download.pytorch.org/whl/cpu
  fi
}

# The model card's code version: the commit, '-dirty' when the tree has uncommitted changes.
git_commit() {
  local commit
  commit=$(git rev-parse HEAD 2> /dev/null) || return 0
  git diff --quiet HEAD 2> /dev/null || commit="$commit-dirty"
  echo "$commit"
}

build() {
  local scratch log mounts=() line step cause started=$SECONDS
  scratch=$(mktemp -d)
  log=${BUILD_LOG:-$scratch/build.log}
  while IFS= read -r line; do mounts+=(-v "$line"); done \
    < <("$PYTHON" docker/pip_mounts.py "$scratch" "$PYTHON")
  echo "building $IMAGE from $DOCKERFILE (base $BASE_IMAGE)" >&2
  if ! podman build --layers --force-rm --format docker --network host \
      --ulimit nofile=1024:1024 --ulimit nproc=4096:4096 \
      "${mounts[@]}" \
      --build-arg "BASE_IMAGE=$BASE_IMAGE" \
      --build-arg "TORCH_INDEX_URL=$(torch_index)" \
      --build-arg "VIDEO_KD_GIT_COMMIT=$(git_commit)" \
      -f "$DOCKERFILE" -t "$IMAGE" . 2>&1 | tee "$log" >&2; then
    # one line: which layer (the Dockerfile's STEP) and why (our tools' `error:` line, or
    # the last thing the step printed)
    step=$(grep -E '^STEP [0-9]+/[0-9]+: ' "$log" | tail -1 | cut -c1-80 || true)
    cause=$(grep -E '^error: ' "$log" | tail -1 | cut -c8- || true)
    [ -n "$cause" ] || cause=$(grep -vE '^(Error: building at STEP|\s*$)' "$log" | tail -1 | cut -c1-160)
    if [ -z "${BUILD_LOG:-}" ]; then
      log=${TMPDIR:-/tmp}/video-kd-image-build.log
      cp "$scratch/build.log" "$log"
    fi
    rm -rf "$scratch"
    die "image build failed at ${step:-its start}...: ${cause} (full log: $log)"
  fi
  rm -rf "$scratch"
  echo "built $IMAGE in $((SECONDS - started))s" >&2
}

ensure_tools
ensure_base
build
