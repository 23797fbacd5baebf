#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install invad into it, editable.
# The environment lives in a cache folder outside the checkout, because PyPI's torch is a CUDA build of
# several GB: a fresh machine pays for it once, later runs and fresh clones reuse it.
# Prints the path of the environment's python on its last line.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${INVAD_CACHE:-$HOME/.cache/invad}
venv=${INVAD_VENV:-$cache/venv}
python=${PYTHON:-python3}

mkdir -p "$cache"
if [ ! -x "$venv/bin/python" ]; then
  echo "setup: creating virtual environment $venv" >&2
  "$python" -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
fi
# Reinstall only when the dependency list or the checkout location changed.
stamp="$venv/.invad-stamp"
want="$(sha256sum "$repo/pyproject.toml" | cut -c1-16) $repo"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "setup: installing invad and its dependencies into $venv (first time: a few minutes, torch is large)" >&2
  # uv downloads and unpacks in parallel: about 70 s for the several GB of torch and its CUDA wheels,
  # where pip takes minutes. pip stays the fallback where uv cannot be had.
  if [ -x "$venv/bin/uv" ] || "$venv/bin/pip" install -q "uv>=0.5" >&2; then
    "$venv/bin/uv" pip install -q --python "$venv/bin/python" -e "$repo[test]" >&2
  else
    echo "setup: uv unavailable, installing with pip" >&2
    "$venv/bin/pip" install -q -e "$repo[test]" >&2
  fi
  # Bytecode for what the project imports, written once here: where PYTHONDONTWRITEBYTECODE is set, as
  # on CI images, nothing writes it later, and every process that imports torch and diffusers compiled
  # them again (a fresh run's tests took twice the CPU). Importing every project module compiles the
  # ~4,000 files it uses; compiling all of site-packages (uv --compile-bytecode, 12,000 files) cost
  # about 75 s of CPU more on a fresh machine.
  "$venv/bin/python" - "$repo" >&2 <<'PY' || echo "setup: warning: warming the bytecode cache failed (tests still run, slower)" >&2
import importlib, pkgutil, sys
sys.dont_write_bytecode = False
sys.path.insert(0, sys.argv[1])
names = ["sklearn.metrics", "matplotlib.pyplot", "pytest", "xdist", "botocore.session"]
for package in ("worker", "producers", "schemas"):
    module = importlib.import_module(package)
    names += [info.name for info in pkgutil.walk_packages(module.__path__, package + ".")]
failed = []
for name in names:
    try:
        importlib.import_module(name)
    except Exception as error:  # a module that needs a GPU or an optional package: skip, name it
        failed.append(f"{name} ({type(error).__name__})")
print(f"setup: bytecode written for {len(sys.modules)} modules" + (f"; not imported: {', '.join(failed)}" if failed else ""))
PY
  echo "$want" > "$stamp"
fi
echo "$venv/bin/python"
