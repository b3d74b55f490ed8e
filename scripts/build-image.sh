#!/usr/bin/env bash
# Build the container image: scripts/build-image.sh IMAGE [BASE_IMAGE] [OFFLINE]   (what `make image` runs)
#
#   OFFLINE=0  docker build with network: the build stage installs the project and its deps from PyPI.
#   OFFLINE=1  no network inside the build: first, on the host, build the project wheel and download every
#              runtime dependency as binary wheels for the base image's Python (version, ABI, glibc, arch) into
#              build/wheels; then `docker build --network none`, installing with `pip --no-index`.
#              The base image must already be in the engine (docker pull / docker import / docker load).
#
# Honours DOCKER_HOST (and the rest of the docker CLI environment). Optional environment:
#   PYTHON_VERSION   the base image's Python as X.Y: skips running the base image to detect it
#   PYTHON_PLATFORM  pip platform tags, comma separated (default derived from the base: manylinux_2_M_<arch>)
#   HOST_PYTHON      the Python whose pip prepares the wheelhouse (default: .venv/bin/python, else python3)
#   BUILD_NETWORK    --network for the online build (e.g. host when the engine runs with --bridge=none)
#   DOCKER_BUILD_ARGS extra arguments for docker build (word-split)
set -euo pipefail

IMAGE=${1:-docker-image-exporter:dev}
BASE_IMAGE=${2:-python:3.12-slim}
OFFLINE=${3:-0}

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
DOCKER=${DOCKER:-docker}

log() { printf 'build-image: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

if [ -z "${HOST_PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then HOST_PYTHON=.venv/bin/python; else HOST_PYTHON=python3; fi
fi

version=$("$HOST_PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
revision=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
created=$(date -u +%Y-%m-%dT%H:%M:%SZ)
source_url=$("$HOST_PYTHON" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"].get("urls", {}).get("Source", "unknown"))')
licenses=$("$HOST_PYTHON" -c 'import tomllib; l = tomllib.load(open("pyproject.toml", "rb"))["project"].get("license", "unknown"); print(l if isinstance(l, str) else l.get("text", "unknown"))')

build_args=(
  --build-arg "BASE_IMAGE=$BASE_IMAGE"
  --build-arg "OFFLINE=$OFFLINE"
  --build-arg "VERSION=$version"
  --build-arg "REVISION=$revision"
  --build-arg "CREATED=$created"
  --build-arg "SOURCE=$source_url"
  --build-arg "LICENSES=$licenses"
  --tag "$IMAGE"
)

wheels=build/wheels
rm -rf "$wheels"

if [ "$OFFLINE" = 1 ]; then
  "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1 \
    || die "base image $BASE_IMAGE is not in the engine; an offline build cannot pull it (docker pull/import/load it first)"

  # What the base image runs: Python X.Y, machine, glibc. The wheels must fit exactly that interpreter.
  if [ -n "${PYTHON_VERSION:-}" ] && [ -n "${PYTHON_PLATFORM:-}" ]; then
    py_version=$PYTHON_VERSION
  else
    probe='import platform, sys; l = platform.libc_ver(); print("%d.%d" % sys.version_info[:2], platform.machine(), l[0] or "none", l[1] or "0")'
    read -r detected machine libc libc_version < <(
      "$DOCKER" run --rm --network none --entrypoint python3 "$BASE_IMAGE" -c "$probe"
    ) || die "could not run python3 in $BASE_IMAGE to detect its version (set PYTHON_VERSION and PYTHON_PLATFORM)"
    py_version=${PYTHON_VERSION:-$detected}
    [ "$libc" = glibc ] || die "$BASE_IMAGE uses '$libc', not glibc: only manylinux wheels are prepared"
  fi
  abi="cp${py_version/./}"
  platform_args=()
  if [ -n "${PYTHON_PLATFORM:-}" ]; then
    IFS=, read -r -a plats <<<"$PYTHON_PLATFORM"
  else
    # manylinux_2_M for every glibc from 2.17 up to the base's, plus the legacy aliases.
    plats=()
    minor=${libc_version#2.}; minor=${minor%%.*}
    for ((m = minor; m >= 17; m--)); do plats+=("manylinux_2_${m}_${machine}"); done
    plats+=("manylinux2014_${machine}" "manylinux2010_${machine}" "manylinux1_${machine}" "linux_${machine}")
  fi
  for p in "${plats[@]}"; do platform_args+=(--platform "$p"); done
  log "wheelhouse for CPython $py_version ($abi) on ${plats[0]} in $wheels"

  mkdir -p "$wheels"
  pip=("$HOST_PYTHON" -m pip --disable-pip-version-check)
  # The project itself is pure Python: one py3-none-any wheel built here (needs its build backend from PyPI),
  # from a copy of what the image gets, so no build/ or *.egg-info lands in the working tree.
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  cp -r pyproject.toml setup.py exporter "$src"/
  for f in README.md LICENSE; do [ -e "$f" ] && cp "$f" "$src"/; done
  find "$src" -name __pycache__ -prune -exec rm -rf {} +
  rm -f "$src"/exporter/_build.py
  # the copy has no .git: setup.py bakes these into exporter/_build.py, as the online build does from build-args
  DIE_REVISION=$revision DIE_BUILD_DATE=$created "${pip[@]}" wheel --quiet --no-deps --wheel-dir "$wheels" "$src"
  project_wheel=$(ls "$wheels"/prometheus_docker_image_exporter-*.whl)
  # Every runtime dependency, resolved for the target interpreter, binary wheels only (no builds in the image).
  "${pip[@]}" download --quiet --only-binary=:all: --dest "$wheels" \
    --implementation cp --python-version "$py_version" --abi "$abi" "${platform_args[@]}" \
    "$project_wheel"
  log "$(find "$wheels" -name '*.whl' | wc -l) wheels, $(du -sh "$wheels" | cut -f1)"

  network=(--network none)
else
  network=()
  [ -n "${BUILD_NETWORK:-}" ] && network=(--network "$BUILD_NETWORK")
fi

log "building $IMAGE from $BASE_IMAGE (offline=$OFFLINE, network: ${network[*]:-default}, version=$version)"
# shellcheck disable=SC2086
"$DOCKER" build "${network[@]}" "${build_args[@]}" ${DOCKER_BUILD_ARGS:-} --file Dockerfile .
log "built $IMAGE"
