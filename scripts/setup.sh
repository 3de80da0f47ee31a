#!/usr/bin/env bash
# One idempotent set-up step for hillwalker, used by both README commands.
#
#   bash scripts/setup.sh           # CP2K + .venv (torch CPU pin, hillwalker) + PLUMED kernel
#   bash scripts/setup.sh --tests   # the same, plus SLURM (slurm-wlm, munge, libpmix-dev), chromium
#
# Every step first checks whether its result is already there, so a second run does nothing
# and takes a few seconds. Steps that need root or a package registry and cannot get them stop
# with a message that says what to install by hand.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"

want_tests=0
for arg in "$@"; do
    case "$arg" in
        --tests) want_tests=1 ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        *) echo "setup.sh: unknown option '$arg' (use --tests or nothing)" >&2; exit 2 ;;
    esac
done

TORCH_VERSION="2.13.0"
HILLCLIMBER_WHEEL="hillclimber==0.1.8"   # carries a full PLUMED 2.11 kernel; we take only that
VENV="$here/.venv"
KERNEL_DIR="$VENV/opt/plumed-kernel"
KERNEL="$KERNEL_DIR/plumed/_lib/lib/libplumedKernel.so"

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------- Debian packages
need_debs=()
command -v cp2k.psmp >/dev/null 2>&1 || need_debs+=(cp2k)
if [ "$want_tests" = 1 ]; then
    command -v slurmctld >/dev/null 2>&1 || need_debs+=(slurm-wlm)
    command -v munged >/dev/null 2>&1 || need_debs+=(munge)
    # headless Chromium: the test that opens `hillwalker report`'s page like a person would
    command -v chromium >/dev/null 2>&1 || need_debs+=(chromium)
    [ -e /usr/include/pmix.h ] || ls /usr/lib/x86_64-linux-gnu/libpmix.so >/dev/null 2>&1 \
        || need_debs+=(libpmix-dev)
fi
if [ "${#need_debs[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        die "missing system packages: ${need_debs[*]}. Install them by hand (Debian: 'sudo apt-get install ${need_debs[*]}'), or on a cluster 'module load cp2k' so that cp2k.psmp is on PATH, then rerun."
    fi
    say "installing Debian packages: ${need_debs[*]}"
    apt-get update -qq || die "apt-get update failed: install ${need_debs[*]} by hand"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_debs[@]}" >/dev/null \
        || die "apt-get install ${need_debs[*]} failed: install them by hand"
fi

# ---------------------------------------------------------------- Python environment
py=""
for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 \
        && "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
        py="$cand"; break
    fi
done
[ -n "$py" ] || die "Python >= 3.11 not found: install python3.11 and rerun"

if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $py"
    "$py" -m venv "$VENV" || die "'$py -m venv' failed: install the venv module (Debian: python3-venv)"
fi
vpy="$VENV/bin/python"

# torch first and pinned: an unpinned torch (pulled in by nequip) would bring GBs of CUDA wheels.
have_torch="$("$vpy" -c 'import torch; print(torch.__version__)' 2>/dev/null || true)"
case "$have_torch" in
    "$TORCH_VERSION"|"$TORCH_VERSION"+*) ;;
    *)
        say "installing torch==$TORCH_VERSION (found: ${have_torch:-none})"
        "$vpy" -m pip install -q --upgrade pip >/dev/null
        "$vpy" -m pip install -q "torch==$TORCH_VERSION" || die "pip install torch==$TORCH_VERSION failed"
        ;;
esac

# The project itself (editable) with its dependencies; redone only when pyproject.toml changes.
stamp="$VENV/.hillwalker-installed"
want_stamp="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want_stamp" ] \
    || ! "$vpy" -c 'import hillwalker' >/dev/null 2>&1; then
    say "installing hillwalker (editable) and its dependencies"
    "$vpy" -m pip install -q -e ".[dev,tblite,pyscf,sw]" "torch==$TORCH_VERSION" || die "pip install -e . failed"
    printf '%s\n' "$want_stamp" > "$stamp.tmp" && mv "$stamp.tmp" "$stamp"
fi

# ---------------------------------------------------------------- PLUMED kernel
# The plain `plumed` wrapper is the declared dependency; it needs a kernel library. The
# hillclimber wheel bundles one (plus its libgomp under hillclimber.libs/, found through the
# kernel's RPATH $ORIGIN/../../../hillclimber.libs). We unpack just those two folders into the
# venv, keeping their relative layout, and never install hillclimber itself (it would also own
# the `plumed` module and pull heavy dependencies).
if [ ! -f "$KERNEL" ]; then
    say "fetching the PLUMED kernel from the $HILLCLIMBER_WHEEL wheel"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    "$vpy" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 \
        "$HILLCLIMBER_WHEEL" -d "$tmp" >/dev/null 2>&1 \
        || die "could not download $HILLCLIMBER_WHEEL; set PLUMED_KERNEL to your own libplumedKernel.so instead"
    "$vpy" - "$tmp" "$KERNEL_DIR" <<'PY'
import pathlib, shutil, sys, zipfile
src, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(src.glob("hillclimber-*.whl"))
staging = dest.with_name(dest.name + ".partial")
shutil.rmtree(staging, ignore_errors=True)
with zipfile.ZipFile(wheel) as zf:
    for info in zf.infolist():
        if info.filename.startswith(("plumed/_lib/", "hillclimber.libs/")) and not info.is_dir():
            target = staging / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as fin, open(target, "wb") as fout:
                shutil.copyfileobj(fin, fout)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                target.chmod(mode)
shutil.rmtree(dest, ignore_errors=True)
staging.rename(dest)   # appears whole or not at all
PY
fi

# ---------------------------------------------------------------- checks
if "$VENV/bin/pip" list 2>/dev/null | grep -qiE '^nvidia-'; then
    say "warning: nvidia-* packages are in $VENV (a CUDA torch was pulled in somewhere)"
fi
"$VENV/bin/hillwalker" doctor --quiet || die "'hillwalker doctor' found problems (see above)"
say "ready: $VENV"
