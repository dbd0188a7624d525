"""Packs what a lent GPU machine lacks to run ``scripts/gpu_check.sh``, within one call.

The device machine of these sessions (``../.library/device/``) runs Python 3.12 with CUDA
torch, numpy, pandas, pyarrow and many more, but no Ray, and it reaches no package index.
A call carries at most 64 MiB of ignored files. So, here, before the call:

    python scripts/device_kit.py                # -> .device_kit/ (ignored by git)

writes into ``.device_kit/``:
- ``wheels/``: every distribution that ``python -m cadc_ray.run`` needs (cadc_ray's
  requirements and theirs, less :data:`ROOTS_LEFT_OUT`, with Ray's :data:`RAY_EXTRAS`), at
  the version installed here, as CPython 3.12 manylinux wheels, except those the device
  image already holds (:data:`ON_THE_IMAGE`) and torch's own. Ray's wheel (79 MB) leaves
  out ``ray/jars/`` (Ray's Java workers, 32 MB), so the kit fits one call;
- ``ml-1m/``: a copy of the MovieLens-1M folder, when ``--ml1m`` names one (the shared
  data does not travel; its licence forbids committing it, and this folder is ignored);
- ``manifest.json``: the wheels, their sizes, the total.

Then one device call runs ``bash scripts/device_gpu_check.sh`` with ``carry=[".device_kit"]``
(see that script). Nothing here needs a GPU; a kit is rebuilt whenever the lock of the
environment it is built from changes.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DEFAULT_KIT = REPO / ".device_kit"
CARRY_LIMIT_BYTES = 64 << 20
"""What one device call carries at most (the tool's limit), the repository included."""

TARGET_PYTHON = "3.12"
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)

_IMAGE_PACKAGES = """
    aiohappyeyeballs aiohttp aiosignal attrs certifi charset-normalizer click cloudpickle
    colorama contourpy cycler filelock fonttools frozenlist fsspec grpcio idna jinja2
    kiwisolver markupsafe matplotlib mpmath msgpack multidict networkx numpy packaging pandas
    pillow prometheus-client propcache protobuf psutil pyarrow pyparsing python-dateutil
    pyyaml requests scipy six sympy tqdm typing-extensions urllib3 yarl
"""
ON_THE_IMAGE = frozenset(canonicalize_name(name) for name in _IMAGE_PACKAGES.split())
"""Distributions the device image already has (its package list in
``../.library/device/KINDS.md``, read 2026-11-17): not carried. Their versions there are
the image's."""

NEVER_CARRIED = frozenset(
    canonicalize_name(name) for name in ("torch", "triton", "setuptools", "pip", "wheel")
)
"""torch is the image's CUDA build; names starting ``nvidia-`` are its CUDA libraries."""

ROOTS_LEFT_OUT = {
    "optuna": "sweeps only (python -m cadc_ray.sweep)",
    "implicit": "the ALS pretrainer only (CADC-ALS)",
    "threadpoolctl": "the ALS pretrainer only (CADC-ALS)",
}
"""cadc_ray's requirements that ``python -m cadc_ray.run`` with MF never imports."""

RAY_EXTRAS = ("train", "tune", "data")
"""Ray's extras carried. Not ``default`` (the dashboard and its agent: 20 MB of
dependencies); Ray starts without a dashboard then, which the GPU check does not need."""

RAY_LEFT_OUT = ("ray/jars/",)
"""Parts of Ray's wheel a Python-only Ray never loads (Java workers' jar, 32 MB)."""


def runtime_closure(
    roots: Iterable[str],
    requires: Callable[[str], list[str] | None],
    version: Callable[[str], str | None],
    python_version: str = TARGET_PYTHON,
) -> dict[str, str]:
    """Every distribution reachable from ``roots`` (requirement strings, extras included)
    through ``requires(name)`` (its Requires-Dist lines, None when not installed), with the
    markers evaluated for Linux and ``python_version``; -> {canonical name: installed
    version}. A requirement whose distribution is not installed here is an error."""
    environment: dict[str, str] = {
        **{key: str(value) for key, value in default_environment().items()},
        "python_version": python_version,
        "sys_platform": "linux",
        "platform_system": "Linux",
    }
    found: dict[str, str] = {}
    extras_seen: dict[str, set[str]] = {}
    pending = [Requirement(root) for root in roots]
    while pending:
        requirement = pending.pop()
        name = canonicalize_name(requirement.name)
        extras = set(requirement.extras)
        if name in found and extras <= extras_seen[name]:
            continue
        installed = version(name)
        if installed is None:
            raise LookupError(f"{requirement.name} is required but not installed here")
        found[name] = installed
        extras_seen.setdefault(name, set()).update(extras)
        for line in requires(name) or []:
            child = Requirement(line)
            if child.marker is None:
                pending.append(child)
                continue
            # A dependency of an extra counts only when that extra was asked for.
            asked = ["", *sorted(extras_seen[name])]
            if any(child.marker.evaluate({**environment, "extra": extra}) for extra in asked):
                pending.append(child)
    return found


def gpu_check_roots(requirements: Iterable[str]) -> list[str]:
    """cadc_ray's run-time requirements (no extras of its own) less :data:`ROOTS_LEFT_OUT`,
    Ray's with :data:`RAY_EXTRAS` only."""
    roots = []
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and "extra" in str(requirement.marker):
            continue  # cadc_ray's own extras (dev, aws)
        name = canonicalize_name(requirement.name)
        if name in ROOTS_LEFT_OUT:
            continue
        if name == "ray":
            requirement.extras = set(RAY_EXTRAS)
        roots.append(str(requirement))
    return roots


def to_carry(closure: Mapping[str, str]) -> dict[str, str]:
    """The closure less what the image holds and torch's own."""
    return {
        name: version
        for name, version in sorted(closure.items())
        if name not in ON_THE_IMAGE and name not in NEVER_CARRIED and not name.startswith("nvidia-")
    }


def without_parts(wheel: Path, prefixes: tuple[str, ...]) -> int:
    """Rewrites ``wheel`` in place without the files under ``prefixes`` (its RECORD too);
    -> bytes saved."""
    before = wheel.stat().st_size
    temporary = wheel.with_suffix(".tmp")
    with (
        zipfile.ZipFile(wheel) as source,
        zipfile.ZipFile(temporary, "w", zipfile.ZIP_DEFLATED) as target,
    ):
        for info in source.infolist():
            if info.filename.startswith(prefixes):
                continue
            data = source.read(info)
            if info.filename.endswith(".dist-info/RECORD"):
                kept = [
                    line for line in data.decode().splitlines() if not line.startswith(prefixes)
                ]
                data = ("\n".join(kept) + "\n").encode()
            target.writestr(info, data)
    temporary.replace(wheel)
    return before - wheel.stat().st_size


def download(name: str, version: str, into: Path) -> Path:
    """``name==version`` as a CPython 3.12 manylinux (or pure) wheel, no dependencies."""
    before = set(into.glob("*.whl"))
    platforms = [option for platform in PLATFORMS for option in ("--platform", platform)]
    command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:"]
    target = ["--python-version", TARGET_PYTHON, "--implementation", "cp", *platforms]
    subprocess.run([*command, *target, "-d", str(into), f"{name}=={version}"], check=True)
    new = set(into.glob("*.whl")) - before
    matches = [path for path in new if canonicalize_name(path.name.split("-")[0]) == name]
    if len(matches) != 1:
        raise RuntimeError(f"{name}=={version}: expected one new wheel, got {sorted(new)}")
    return matches[0]


def tracked_bytes(repository: Path) -> int:
    """The size of the files git tracks in ``repository``: what a call sends besides the kit."""
    listing = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repository, capture_output=True, check=True
    ).stdout
    names = [name for name in listing.decode().split("\0") if name]
    return sum(
        (repository / name).stat().st_size for name in names if (repository / name).is_file()
    )


def _installed_requires(name: str) -> list[str] | None:
    try:
        return metadata.requires(name) or []
    except metadata.PackageNotFoundError:
        return None


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_KIT, help="the kit's folder")
    parser.add_argument(
        "--ml1m",
        type=Path,
        default=None,
        help="a MovieLens-1M folder to carry (e.g. ../shared/data/ml-1m)",
    )
    args = parser.parse_args(argv)
    if args.ml1m is not None and not args.ml1m.is_dir():
        parser.error(f"--ml1m: {args.ml1m} is not a folder")
    requirements = _installed_requires("cadc_ray")  # its Requires-Dist lines
    if not requirements:
        parser.error("cadc_ray is not installed in this environment (bash scripts/setup.sh)")
    roots = gpu_check_roots(requirements)
    carried = to_carry(runtime_closure(roots, _installed_requires, _installed_version))
    staging = Path(tempfile.mkdtemp(prefix=".device_kit-", dir=args.out.parent))
    try:
        wheels = staging / "wheels"
        wheels.mkdir()
        entries: list[dict[str, Any]] = []
        for name, version in carried.items():
            wheel = download(name, version, wheels)
            saved = without_parts(wheel, RAY_LEFT_OUT) if name == "ray" else 0
            entries.append({"wheel": wheel.name, "bytes": wheel.stat().st_size, "left_out": saved})
        if args.ml1m is not None:
            shutil.copytree(args.ml1m, staging / "ml-1m")
        total = sum(path.stat().st_size for path in staging.rglob("*") if path.is_file())
        manifest = {"python": TARGET_PYTHON, "wheels": entries, "total_bytes": total}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        checkout = tracked_bytes(REPO)
        if total + checkout > CARRY_LIMIT_BYTES:
            print(json.dumps(manifest, indent=1), file=sys.stderr)
            raise SystemExit(
                f"device_kit: {total / 2**20:.1f} MiB and the checkout's "
                f"{checkout / 2**20:.1f} MiB, over the {CARRY_LIMIT_BYTES >> 20} MiB a call "
                "carries"
            )
        if args.out.exists():
            shutil.rmtree(args.out)
        staging.replace(args.out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    names = ", ".join(re.sub(r"-(py|cp)\d.*", "", entry["wheel"]) for entry in entries)
    print(f"device_kit: {len(entries)} wheels, {total / 2**20:.1f} MiB -> {args.out} ({names})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
