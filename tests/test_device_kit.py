"""scripts/device_kit.py: what a lent GPU machine is sent, computed without the network."""

from __future__ import annotations

import zipfile
from pathlib import Path
from types import ModuleType

import pytest
from conftest import load_script


@pytest.fixture(scope="module")
def kit() -> ModuleType:
    return load_script("device_kit")


REQUIRES = {
    "cadc-ray": [
        "ray[default,train,tune,data]<3,>=2.60",
        "torch>=2.4",
        "optuna>=4",
        "implicit>=0.7",
        "numpy>=1.26",
        'pytest>=8; extra == "dev"',
    ],
    "ray": [
        "click>=7.0",
        "jsonschema",
        'pandas; extra == "data"',
        'pyarrow>=17; extra == "data"',
        'pydantic<3; extra == "train"',
        'tensorboardx; extra == "tune"',
        'aiohttp_cors; extra == "default"',
        'py-spy>=0.2; python_version < "3.12" and extra == "default"',
        'cupy-cuda12x; sys_platform == "darwin"',
    ],
    "jsonschema": ["referencing>=0.28"],
    "referencing": ["jsonschema; extra == 'never-asked'"],
    "pydantic": ["pydantic-core==2.50.5"],
    "pydantic-core": [],
    "tensorboardx": [],
    "click": [],
    "pandas": ["numpy>=1.26"],
    "pyarrow": [],
    "numpy": [],
    "torch": ["nvidia-cublas; platform_system == 'Linux'", "triton"],
    "nvidia-cublas": [],
    "triton": [],
}
VERSIONS = {name: f"{index}.0" for index, name in enumerate(REQUIRES)}


def closure(kit: ModuleType, roots: list[str]) -> dict[str, str]:
    return kit.runtime_closure(roots, REQUIRES.get, VERSIONS.get)


def test_the_gpu_checks_roots_leave_out_sweeps_als_and_the_dashboard(kit: ModuleType) -> None:
    roots = kit.gpu_check_roots(REQUIRES["cadc-ray"])
    assert roots == ["ray[data,train,tune]<3,>=2.60", "torch>=2.4", "numpy>=1.26"]


def test_the_closure_follows_extras_and_markers_for_linux_python_312(kit: ModuleType) -> None:
    found = closure(kit, kit.gpu_check_roots(REQUIRES["cadc-ray"]))
    assert set(found) == {
        "ray",
        "click",
        "jsonschema",
        "referencing",
        "pandas",
        "pyarrow",
        "pydantic",
        "pydantic-core",
        "tensorboardx",
        "torch",
        "nvidia-cublas",
        "triton",
        "numpy",
    }  # no aiohttp-cors (default), py-spy (< 3.12), cupy (darwin), pytest, optuna
    assert found["pydantic-core"] == VERSIONS["pydantic-core"]  # the version installed here
    # An extra asked for after the distribution was reached without it is followed then.
    assert "pydantic" not in closure(kit, ["ray"])
    assert "pydantic" in closure(kit, ["click", "ray", "ray[train]"])
    with pytest.raises(LookupError, match="aiohttp_cors is required but not installed"):
        closure(kit, ["ray[default]"])


def test_what_the_image_has_and_torchs_own_stay_behind(kit: ModuleType) -> None:
    found = closure(kit, kit.gpu_check_roots(REQUIRES["cadc-ray"]))
    carried = kit.to_carry(found)
    assert set(carried) == {
        "ray",
        "jsonschema",
        "referencing",
        "pydantic",
        "pydantic-core",
        "tensorboardx",
    }


def test_rays_wheel_loses_its_jars_and_their_record_lines(kit: ModuleType, tmp_path: Path) -> None:
    wheel = tmp_path / "ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl"
    jar = b"J" * 10_000
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("ray/__init__.py", b"version = 1\n")
        archive.writestr("ray/jars/ray_dist.jar", jar)
        archive.writestr(
            "ray-2.60.0.dist-info/RECORD",
            "ray/__init__.py,sha256=x,12\nray/jars/ray_dist.jar,sha256=y,10000\n"
            "ray-2.60.0.dist-info/RECORD,,\n",
        )
    assert kit.without_parts(wheel, kit.RAY_LEFT_OUT) > 0
    with zipfile.ZipFile(wheel) as archive:
        assert archive.namelist() == ["ray/__init__.py", "ray-2.60.0.dist-info/RECORD"]
        assert archive.read("ray/__init__.py") == b"version = 1\n"
        record = archive.read("ray-2.60.0.dist-info/RECORD").decode()
    assert "jars" not in record and "ray/__init__.py,sha256=x,12" in record
