#!/usr/bin/env bash
# Install check: the repository installs as a PEP 517/660 package with pip 24.0 (which takes
# the legacy `setup.py develop` route for a project without pyproject.toml when `wheel` is
# installed) and the newest setuptools, without build isolation and without a package
# registry, against the torch that is already installed:
#
#   (a) editable:     pip install --no-build-isolation --no-deps --no-index -e <repo>
#   (b) non-editable: pip install --no-build-isolation --no-deps --no-index <repo>
#
# each into its own fresh `venv --system-site-packages` (it sees torch) under a temporary
# directory, then imports pixcontrast, pixcontrast.kernels and pixcontrast._C from outside
# the repository and checks that they come from that venv's install: (a) from the repo
# (pixcontrast.kernels from kernels/, through setuptools' editable finder), (b) from the
# venv's site-packages. The non-editable build is pointed at the temporary directory
# (DIST_EXTRA_CONFIG), so it leaves nothing in the repository; the editable build only
# (re)writes pixcontrast/_C*.so there, as `pip install --no-build-isolation -e .` does.
#
# Needs: python3 with torch installed; the registry for pip==24.0, setuptools and wheel.
# Run from anywhere: bash .ci/check_install.sh (PYTHON=... picks the interpreter).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd -P)"
PY="${PYTHON:-python3}"
export MAX_JOBS=2
export PYTHONNOUSERSITE=1          # the venvs see the system site-packages, not ~/.local
export PIP_DISABLE_PIP_VERSION_CHECK=1

fail() {
  echo "check_install: FAILED: $*" >&2
  exit 1
}
say() { echo "check_install: $*"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/pixcontrast-check-install.XXXXXX")"
WORK="$(cd "$WORK" && pwd -P)"
trap 'rm -rf "$WORK"' EXIT
case "$WORK/" in "$ROOT"/*) fail "the temporary directory $WORK is inside the repository";; esac

# The checks that run inside the venvs (written out here so that this script is the one file).
cat >"$WORK/check_venv.py" <<'EOF'
import importlib.metadata as md
import os
import sys

# Through the metadata, not by importing them (importing pip before setuptools pulls in the
# stdlib's distutils, which setuptools then replaces with a warning).
venv = os.path.realpath(sys.argv[1]) + os.sep
for name in ("pip", "setuptools", "wheel"):
    dist = md.distribution(name)
    path = os.path.realpath(str(dist.locate_file("")))
    print(f"check_install:   {name} {dist.version} in {path}")
    if not (path + os.sep).startswith(venv):
        sys.exit(f"the {name} found first is in {path}, not in the venv")
    if name == "pip" and dist.version != "24.0":
        sys.exit(f"pip is {dist.version}, wanted 24.0")
EOF
cat >"$WORK/check_import.py" <<'EOF'
import importlib.metadata as md
import json
import os
import sys

root, venv, mode = (os.path.realpath(sys.argv[1]), os.path.realpath(sys.argv[2]), sys.argv[3])
errors = []


def inside(path, folder):
    return os.path.realpath(path).startswith(folder.rstrip(os.sep) + os.sep)


import torch  # noqa: E402
import pixcontrast  # noqa: E402
import pixcontrast._C  # noqa: E402
import pixcontrast.data  # noqa: E402, F401
import pixcontrast.kernels  # noqa: E402
import pixcontrast.models  # noqa: E402, F401
import pixcontrast.train  # noqa: E402, F401
from pixcontrast.ops import fused_pixel_contrast  # noqa: E402

files = {m.__name__: os.path.realpath(m.__file__)
         for m in (pixcontrast, pixcontrast.kernels, pixcontrast._C)}
for name, path in files.items():
    print(f"check_install:   ({mode}) {name}: {path}")

# The distribution that importlib.metadata finds first must be this venv's own install
# (the system site-packages may hold another install of pixcontrast, e.g. an editable one).
dist = md.distribution("pixcontrast")
site = os.path.realpath(str(dist.locate_file("")))
print(f"check_install:   ({mode}) pixcontrast {dist.version} installed in {site}")
if not inside(site, venv):
    errors.append(f"the pixcontrast install found first is in {site}, not in the venv")
direct = json.loads(dist.read_text("direct_url.json") or "{}")
editable = bool(direct.get("dir_info", {}).get("editable"))
if editable != (mode == "editable"):
    errors.append(f"direct_url.json says editable={editable}: {direct}")

if mode == "editable":
    want = {"pixcontrast": os.path.join(root, "pixcontrast", "__init__.py"),
            "pixcontrast.kernels": os.path.join(root, "kernels", "__init__.py")}
    for name, path in want.items():
        if files[name] != path:
            errors.append(f"{name} is {files[name]}, wanted {path}")
    if os.path.dirname(files["pixcontrast._C"]) != os.path.join(root, "pixcontrast"):
        errors.append(f"pixcontrast._C is {files['pixcontrast._C']}, not in the repo's "
                      f"pixcontrast/")
    # pixcontrast.kernels (kernels/) is found by a finder from the venv's own install, not
    # by one that an install in the system site-packages put on sys.meta_path.
    finder = next((f for f in sys.meta_path if hasattr(f, "find_spec")
                   and f.find_spec("pixcontrast.kernels", pixcontrast.__path__) is not None),
                  None)
    where = getattr(sys.modules.get(getattr(finder, "__module__", "")), "__file__", None)
    print(f"check_install:   (editable) pixcontrast.kernels is found by {finder} ({where})")
    if where is None or not inside(where, venv):
        errors.append(f"pixcontrast.kernels is resolved by {finder} from {where}, not by "
                      f"the venv's editable install")
else:
    for name, path in files.items():
        if not inside(path, site):
            errors.append(f"{name} is {path}, not in the venv's site-packages {site}")
    # Every module of the source tree is installed (kernels/ as pixcontrast/kernels/).
    pkg = os.path.dirname(files["pixcontrast"])
    for src, dst in ((os.path.join(root, "pixcontrast"), pkg),
                     (os.path.join(root, "kernels"), os.path.join(pkg, "kernels"))):
        for dirpath, dirnames, filenames in os.walk(src):
            dirnames[:] = [d for d in dirnames if d != "__pycache__"]
            for fn in filenames:
                if fn.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, fn), src)
                    if not os.path.isfile(os.path.join(dst, rel)):
                        errors.append(f"{os.path.join(src, rel)} is not installed as "
                                      f"{os.path.join(dst, rel)}")

loss = fused_pixel_contrast(torch.randn(8, 16), torch.randint(0, 3, (8,)))
print(f"check_install:   ({mode}) fused_pixel_contrast on the CPU: {float(loss):.4f}")
if not torch.isfinite(loss):
    errors.append(f"fused_pixel_contrast returned {loss}")

if errors:
    print("\n".join(f"check_install: ({mode}) {e}" for e in errors), file=sys.stderr)
    sys.exit(1)
EOF

# Runs a command with its output in $WORK/<name>.log; on failure prints the log's tail.
logged() {
  local name="$1"; shift
  local t0=$SECONDS
  if ! "$@" >"$WORK/$name.log" 2>&1; then
    tail -n 80 "$WORK/$name.log" >&2
    fail "$name: \`$*\` exited non-zero (output above)"
  fi
  say "$name: ok ($((SECONDS - t0)) s)"
}

# pip went the PEP 517/660 way (pyproject.toml), not the legacy setup.py develop/install one.
check_pep517() {
  local log="$WORK/$1.log"
  if grep -q "setup.py develop\|setup.py install\|Preparing metadata (setup.py)" "$log" \
      || ! grep -q "(pyproject.toml)" "$log"; then
    cat "$log" >&2
    fail "$1: pip did not build pixcontrast through pyproject.toml (PEP 517/660), see above"
  fi
}

"$PY" -c 'import torch' 2>/dev/null \
  || fail "$PY cannot import torch: install torch (pip install -r requirements.txt) first"

if git -C "$ROOT" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  HAVE_GIT=1
  status_before="$(git -C "$ROOT" status --porcelain)"
else
  HAVE_GIT=0
  say "NOTE: $ROOT is not a git checkout; the repository-cleanliness checks are skipped"
fi

# A fresh venv that sees the system site-packages (torch), with pip 24.0 and the newest
# setuptools (and wheel) from the registry installed into the venv itself. With `wheel`
# importable, pip 24.0 takes the legacy `setup.py develop` / `setup.py install` route for a
# project without pyproject.toml (the route that fails: develop re-runs pip with build
# isolation); without it pip would use PEP 517 anyway, and this check would prove nothing.
make_venv() {
  local venv="$1"
  logged "venv-$(basename "$venv")" "$PY" -m venv --system-site-packages "$venv"
  logged "pip-$(basename "$venv")" "$venv/bin/python" -m pip install pip==24.0
  logged "setuptools-$(basename "$venv")" \
    "$venv/bin/python" -m pip install --upgrade --ignore-installed setuptools wheel
  "$venv/bin/python" "$WORK/check_venv.py" "$venv" \
    || fail "the venv $venv does not use its own pip 24.0, setuptools and wheel (see above)"
}

# Imports the installed package from outside the repository and checks where it came from.
# mode: editable | wheel
check_import() {
  local venv="$1" mode="$2"
  (cd "$WORK" && PYTHONDONTWRITEBYTECODE=1 \
     "$venv/bin/python" "$WORK/check_import.py" "$ROOT" "$venv" "$mode") \
    || fail "($mode) the import check in $venv failed (see above)"
  say "($mode) import check: ok"
}

PIP_FLAGS=(--no-build-isolation --no-deps --no-index)

# (a) editable install.
say "(a) editable install: pip ${PIP_FLAGS[*]} -e $ROOT"
make_venv "$WORK/editable"
logged "install-editable" "$WORK/editable/bin/python" -m pip install "${PIP_FLAGS[@]}" -e "$ROOT"
check_pep517 install-editable
check_import "$WORK/editable" editable

# (b) non-editable install. setuptools builds in <repo>/build and <repo>/*.egg-info unless
# told otherwise; DIST_EXTRA_CONFIG (an extra setup.cfg that setuptools reads) moves both
# into $WORK, and the repository's ignored files must be the same before and after.
say "(b) non-editable install: pip ${PIP_FLAGS[*]} $ROOT"
make_venv "$WORK/wheel"
printf '[build]\nbuild_base = %s\n[egg_info]\negg_base = %s\n' \
  "$WORK/build" "$WORK/egg-info" >"$WORK/setup.cfg"
mkdir -p "$WORK/egg-info"
if [ "$HAVE_GIT" = 1 ]; then
  ignored_before="$(git -C "$ROOT" status --porcelain --ignored)"
fi
logged "install-wheel" env DIST_EXTRA_CONFIG="$WORK/setup.cfg" \
  "$WORK/wheel/bin/python" -m pip install "${PIP_FLAGS[@]}" "$ROOT"
check_pep517 install-wheel
if [ "$HAVE_GIT" = 1 ]; then
  ignored_after="$(git -C "$ROOT" status --porcelain --ignored)"
  if [ "$ignored_before" != "$ignored_after" ]; then
    diff <(echo "$ignored_before") <(echo "$ignored_after") >&2 || true
    fail "(b) the non-editable install wrote into the repository (git status --ignored" \
         "changed, see above); its build outputs belong in $WORK"
  fi
fi
check_import "$WORK/wheel" wheel

if [ "$HAVE_GIT" = 1 ]; then
  status_after="$(git -C "$ROOT" status --porcelain)"
  if [ "$status_before" != "$status_after" ]; then
    diff <(echo "$status_before") <(echo "$status_after") >&2 || true
    fail "git status --porcelain changed during the install check (see above)"
  fi
fi
say "all install checks passed (${SECONDS} s)"
