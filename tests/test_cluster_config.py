"""Offline validation of the cluster configs, exactly as `ray up` validates them.

docs/ray_notes.md, "Cluster config": ``validate_config(prepare_config(deepcopy(yaml)))`` is what
``ray up`` runs before touching a cloud. On top of Ray's schema, these tests check what
matters for this project: the dashboard never binds publicly (Ray's own AWS defaults use
``--dashboard-host=0.0.0.0``), Train V2 state tracking is on, the GPU pool scales from 0
with explicit GPU resources, and the nodes install the right torch build.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cadc_ray.sweep.driver import TRIAL_SLOT_RESOURCE

REPO_ROOT = Path(__file__).resolve().parents[1]
AWS_CONFIG = REPO_ROOT / "cluster.yaml"
LOCAL_CONFIG = REPO_ROOT / "examples" / "cluster-local.yaml"
PUBLIC_HOSTS = ("0.0.0.0", "::", "[::]")


def _prepared(raw: dict[str, Any]) -> dict[str, Any]:
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    return prepared


def _load(path: Path) -> dict[str, Any]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict), f"{path}: top level must be a mapping"
    return raw


def _start_commands(prepared: dict[str, Any]) -> str:
    return "\n".join(prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"])


def _dashboard_hosts(command: str) -> list[str]:
    return re.findall(r"--dashboard-host[= ](\S+)", command)


@pytest.fixture(scope="module")
def aws_prepared() -> dict[str, Any]:
    return _prepared(_load(AWS_CONFIG))


@pytest.fixture(scope="module")
def local_prepared() -> dict[str, Any]:
    return _prepared(_load(LOCAL_CONFIG))


@pytest.mark.parametrize("prepared_name", ["aws_prepared", "local_prepared"])
def test_dashboard_binds_to_localhost_only(
    prepared_name: str, request: pytest.FixtureRequest
) -> None:
    prepared = request.getfixturevalue(prepared_name)
    head_start = "\n".join(prepared["head_start_ray_commands"])
    assert _dashboard_hosts(head_start) == ["127.0.0.1"]
    everything = yaml.safe_dump(prepared)
    for host in PUBLIC_HOSTS:
        assert f"--dashboard-host={host}" not in everything
        assert f"--dashboard-host {host}" not in everything


@pytest.mark.parametrize("prepared_name", ["aws_prepared", "local_prepared"])
def test_every_ray_start_has_state_tracking_and_token_auth(
    prepared_name: str, request: pytest.FixtureRequest
) -> None:
    prepared = request.getfixturevalue(prepared_name)
    starts = [
        command
        for command in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]
        if "ray start" in command
    ]
    assert len(starts) == 2
    for command in starts:
        before_start = command.split("ray start")[0]
        assert "RAY_TRAIN_ENABLE_STATE_TRACKING=1" in before_start
        assert "RAY_AUTH_MODE=token" in before_start
    # The token the start commands demand is shipped to every node.
    assert prepared["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"


def test_aws_node_types_and_resources(aws_prepared: dict[str, Any]) -> None:
    node_types = aws_prepared["available_node_types"]
    head = node_types[aws_prepared["head_node_type"]]
    assert aws_prepared["provider"]["type"] == "aws"
    assert head["resources"]["GPU"] == 0
    assert head["resources"]["CPU"] >= 4
    # The sweep caps concurrent trials with this custom resource, without spending CPUs.
    assert head["resources"][TRIAL_SLOT_RESOURCE] >= 1
    assert head["max_workers"] == 0

    gpu_pools = [name for name, spec in node_types.items() if spec["resources"].get("GPU", 0) > 0]
    assert gpu_pools == ["worker.gpu"]
    gpu = node_types["worker.gpu"]
    assert gpu["min_workers"] == 0  # no GPU bill while idle
    assert gpu["max_workers"] >= 1
    assert gpu["resources"] == {"CPU": 4, "GPU": 1}
    assert gpu["node_config"]["InstanceType"].startswith("g5.")

    cpu_pool = node_types["worker.cpu"]
    assert cpu_pool["min_workers"] == 0
    assert cpu_pool["resources"]["GPU"] == 0
    assert cpu_pool["resources"]["CPU"] >= 1
    for spec in node_types.values():
        assert isinstance(spec["resources"]["CPU"], int)
        assert "ImageId" in spec["node_config"]


def test_aws_setup_installs_cuda_torch_only_on_gpu_nodes(aws_prepared: dict[str, Any]) -> None:
    node_types = aws_prepared["available_node_types"]
    cpu_index = "download.pytorch.org/whl/cpu"

    def torch_installs(commands: list[str]) -> list[str]:
        return [c for c in commands if re.search(r"pip install .*\"torch==", c)]

    gpu_torch = torch_installs(node_types["worker.gpu"]["worker_setup_commands"])
    assert len(gpu_torch) == 1 and cpu_index not in gpu_torch[0]
    assert any(
        "torch.cuda.is_available()" in c for c in node_types["worker.gpu"]["worker_setup_commands"]
    )
    for commands in (
        node_types["worker.cpu"]["worker_setup_commands"],
        aws_prepared["head_setup_commands"],
    ):
        cpu_torch = torch_installs(commands)
        assert len(cpu_torch) == 1 and cpu_index in cpu_torch[0]
    for commands in (
        node_types["worker.gpu"]["worker_setup_commands"],
        node_types["worker.cpu"]["worker_setup_commands"],
        aws_prepared["head_setup_commands"],
    ):
        assert any("cadc_ray[aws]" in c and "-e" in c for c in commands)


def test_local_config_lists_machines(local_prepared: dict[str, Any]) -> None:
    provider = local_prepared["provider"]
    assert provider["type"] == "local"
    assert provider["head_ip"]
    assert len(provider["worker_ips"]) >= 1
    assert f'"{TRIAL_SLOT_RESOURCE}"' in "\n".join(local_prepared["head_start_ray_commands"])


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        ("unknown_top_level_key", "Additional properties"),
        ("missing_resources", "'resources' is a required property"),
        ("fractional_gpu", "is not of type 'integer'"),
        ("head_not_a_node_type", "head_node_type"),
    ],
)
def test_broken_copy_fails_validation(breakage: str, message: str) -> None:
    from jsonschema import ValidationError

    raw = _load(AWS_CONFIG)
    if breakage == "unknown_top_level_key":
        raw["dashbaord_host"] = "127.0.0.1"  # a typo must not pass silently
    elif breakage == "missing_resources":
        del raw["available_node_types"]["worker.gpu"]["resources"]
    elif breakage == "fractional_gpu":
        raw["available_node_types"]["worker.gpu"]["resources"]["GPU"] = 0.5
    elif breakage == "head_not_a_node_type":
        raw["head_node_type"] = "head.gpu"
    with pytest.raises((ValidationError, ValueError, KeyError)) as raised:
        _prepared(raw)
    assert message in str(raised.value)


def test_aws_every_node_mounts_the_shared_filesystem(aws_prepared: dict[str, Any]) -> None:
    """Train checkpoints, Tune state and prepared data are POSIX paths seen by all nodes."""
    node_types = aws_prepared["available_node_types"]
    command_lists = [
        aws_prepared["head_setup_commands"],
        node_types["worker.gpu"]["worker_setup_commands"],
        node_types["worker.cpu"]["worker_setup_commands"],
    ]
    for commands in command_lists:
        mounts = [c for c in commands if "mount -t nfs4" in c and " /mnt/cadc" in c]
        assert len(mounts) == 1
        # Mounted before anything is installed or started.
        assert commands.index(mounts[0]) == 0
