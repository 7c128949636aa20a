#!/usr/bin/env bash
# hylo: install everything the build and the tests need, on Debian 12 or Ubuntu 24.04, as root.
#
# Idempotent: packages already present are not reinstalled, and on a machine with no network (the GPU
# machine) the script succeeds when everything is already there, and fails naming what is missing otherwise.
#
#   scripts/setup.sh            system packages + Python test oracles (+ cuDNN frontend headers with CUDA)
#   HYLO_SETUP_NO_PIP=1 ...     skip the Python oracles (tests that need them then skip with a message)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
log() { printf '[setup] %s\n' "$*"; }

# ---- system packages --------------------------------------------------------------------------------
# One list for both distributions: the names are the same on Debian 12 and Ubuntu 24.04.
pkgs=(
  build-essential cmake ninja-build pkg-config git ca-certificates
  openmpi-bin libopenmpi-dev            # MPI (OpenMPI; UCX comes with it as the default PML where present)
  libboost-dev                          # Boost.Asio (header-only use)
  libspdlog-dev libfmt-dev              # logging (spdlog used header-only: sonames differ between distros)
  nlohmann-json3-dev                    # JSON (configs, safetensors headers)
  libcli11-dev                          # command line
  libpcre2-dev                          # tokenizer pre-tokenizer regex (JIT)
  libgtest-dev libgmock-dev             # tests
  libbenchmark-dev                      # micro-benchmarks
  libopenblas-dev                       # BLAS for the CPU reference engine
  python3 python3-pip python3-venv      # test oracles
  bible-kjv-text bible-kjv              # the long document of the README's main job (`bible` prints it)
)

# Tools may come from outside dpkg (the GPU machine has cmake 4 and ninja installed that way): a command on
# PATH counts as installed.
declare -A provides=([cmake]=cmake [ninja-build]=ninja [bible-kjv]=bible [python3]=python3)
missing=()
for p in "${pkgs[@]}"; do
  if [[ -n "${provides[$p]:-}" ]] && command -v "${provides[$p]}" >/dev/null 2>&1; then continue; fi
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "[setup] error: these packages are missing and installing them needs root: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get update -qq || ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    # No network (the GPU machine): only fatal when something the build cannot do without is missing.
    essential=()
    for p in "${missing[@]}"; do
      case "$p" in
        bible-kjv-text|bible-kjv|ninja-build|python3-venv|libbenchmark-dev) ;;   # optional: things skip without them
        *) essential+=("$p") ;;
      esac
    done
    if ((${#essential[@]})); then
      echo "[setup] error: could not install ${essential[*]} (no network?). Install them, then rerun." >&2
      echo "[setup] (on a machine without network, e.g. the GPU machine, build on the CI/dev machine and carry the" >&2
      echo "[setup]  binaries: they link PCRE2 statically and spdlog header-only; see README 'Build options')" >&2
      exit 1
    fi
    log "warning: could not install optional packages: ${missing[*]} (continuing)"
  fi
else
  log "system packages: all present"
fi

# ---- Python test oracles ------------------------------------------------------------------------------
# Used ONLY by tests, as independent references (safetensors format, HF tokenizers). Installed into a
# project-local virtual environment so the system Python is left alone.
if [[ "${HYLO_SETUP_NO_PIP:-0}" != 1 ]]; then
  venv="$here/.venv"
  py=python3
  if [[ ! -x "$venv/bin/python" ]]; then
    if python3 -m venv "$venv" 2>/dev/null; then :; else
      log "warning: python3 -m venv failed; using the system python3"
      venv=""
    fi
  fi
  [[ -n "$venv" ]] && py="$venv/bin/python"
  # jinja2: renders chat templates for the tokenizer test; matplotlib: the scaling plots (scripts/scaling)
  oracles=(numpy safetensors tokenizers jinja2 matplotlib)
  need=()
  for m in "${oracles[@]}"; do "$py" -c "import $m" 2>/dev/null || need+=("$m"); done
  if command -v nvcc >/dev/null 2>&1 || [[ -x /usr/local/cuda/bin/nvcc ]]; then
    "$py" -c "import cudnn" 2>/dev/null || need+=("nvidia-cudnn-frontend")
  fi
  if ((${#need[@]})); then
    log "pip: ${need[*]}"
    "$py" -m pip install -q --disable-pip-version-check "${need[@]}" ||
      log "warning: pip install failed (no network?); tests needing ${need[*]} will skip"
  else
    log "python oracles: all present"
  fi
fi
log "done"
