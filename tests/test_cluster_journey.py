"""The user's cluster journey, on this machine, as one test.

``ray up cluster.yaml`` cannot run here (its config is checked offline by
``tests/test_cluster_config.py``), so the cluster comes from Ray's fake multi-node provider
(``RAY_FAKE_CLUSTER=1``, the provider behind ``ray.cluster_utils.AutoscalingCluster``):
a head node and an autoscaler whose node types are ``cluster.yaml``'s, each "node" a set
of Ray processes on this machine. The journey:

1. start the cluster with token auth on, the dashboard on 127.0.0.1, the GPU pool at 0 nodes;
2. ``scripts/submit_sweep.sh`` a small sweep (``tests/specs/cluster_journey.yaml``,
   ``use_gpu: auto``) through the Jobs API, outputs on the "shared" folder, the code from
   the copy every node has (``--code-on-cluster``: see :func:`copy_code` for why);
3. follow the job through the dashboard's Jobs API with the token until it SUCCEEDS;
4. check that the autoscaler started a ``worker.gpu`` node and that every Train worker of
   the sweep ran on one (their ``GPU`` is a label on this CPU machine: the device module
   falls back to the CPU with a warning, and to gloo for the process group);
5. ``scripts/fetch_results.sh --mounted`` brings the sweep's ``results.csv``;
6. shut the cluster down and check that none of its processes is left.

The cluster is not ``AutoscalingCluster.start()``: that runs ``ray stop --force``, which
would kill every Ray on the machine. The head runs in its own process session (the fake
worker nodes inherit it), temp dir, ports and token, with a mark in its environment that
every process of the cluster inherits (job entrypoints run in sessions of their own);
teardown signals those processes only. Its processes get ``RAY_ADDRESS`` so that
none of them resolves "the local cluster" to another Ray instance on this machine. (Ray
processes of *other* instances that look up their cluster by scanning for raylets, as
Train's placement-group cleaner does, see two instances while this test runs and log an
error: the same happens beside any second Ray on a machine, docs/cluster.md.)
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import run_bash_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBMIT = REPO_ROOT / "scripts" / "submit_sweep.sh"
FETCH = REPO_ROOT / "scripts" / "fetch_results.sh"
SPEC = "tests/specs/cluster_journey.yaml"  # the same relative path in the nodes' code copy
SWEEP_NAME = "cluster-journey"
GPU_NODE_TYPE = "worker.gpu"
FAKE_HEAD_NODE_TYPE = "ray.head.default"  # the fake provider's name for the head's type
FAKE_NODE_OBJECT_STORE_BYTES = 100 * 1024 * 1024
CPU_FALLBACK_WARNING = "sees no CUDA device: computing on the CPU"

CLUSTER_START_SECONDS = 300
START_ATTEMPTS = 3
JOB_SECONDS = 900
TEARDOWN_SECONDS = 60

pytestmark = pytest.mark.ray


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def fake_autoscaling_config(cluster: dict[str, Any], gcs_address: str) -> dict[str, Any]:
    """``cluster.yaml`` as the fake multi-node provider runs it: the same node types, counts
    and resources (the head's type under the provider's fixed name), no cloud, no setup.

    Each fake node also gets a small object store (by default a node takes 30% of this
    machine's memory), as Ray's own example config for this provider does.
    """
    head_type = cluster["head_node_type"]
    node_types: dict[str, Any] = {}
    for name, node_type in cluster["available_node_types"].items():
        if name == head_type:
            continue
        node_types[name] = {
            "resources": {
                **node_type["resources"],
                "object_store_memory": FAKE_NODE_OBJECT_STORE_BYTES,
            },
            "node_config": {},
            "min_workers": node_type.get("min_workers", 0),
            "max_workers": node_type["max_workers"],
        }
    node_types[FAKE_HEAD_NODE_TYPE] = {
        "resources": dict(cluster["available_node_types"][head_type]["resources"]),
        "node_config": {},
        "max_workers": 0,
    }
    return {
        "cluster_name": f"{cluster['cluster_name']}-fake",
        "max_workers": cluster["max_workers"],
        "upscaling_speed": cluster["upscaling_speed"],
        "idle_timeout_minutes": cluster["idle_timeout_minutes"],
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            # Worker nodes join this head (the provider's default is port 6379).
            "gcs_address": gcs_address,
        },
        "available_node_types": node_types,
        "head_node_type": FAKE_HEAD_NODE_TYPE,
        "auth": {},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


CLUSTER_MARK = "CADC_JOURNEY_CLUSTER"
"""Set, to the cluster's folder, in the environment of the head: every process of the
cluster inherits it, also those that start a process session of their own (the Jobs API
runs each job's entrypoint in one)."""


def cluster_processes(session_id: int, folder: Path) -> list[int]:
    """Live processes of the fake cluster: in the head's process session, or carrying its
    mark in their environment (zombies left out, this process too)."""
    mark = f"{CLUSTER_MARK}={folder}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            # /proc/PID/stat: "pid (comm) state ppid pgrp session ..."; comm may hold spaces.
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] == "Z":
                continue
            if int(fields[3]) == session_id or mark in (entry / "environ").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


@dataclass
class FakeCluster:
    """A running fake autoscaling cluster: its folder, ports, token and process session."""

    folder: Path
    gcs_address: str
    dashboard_url: str
    token: str
    token_file: Path
    env: dict[str, str]
    head: subprocess.Popen[bytes]

    @property
    def shared_root(self) -> Path:
        return self.folder / "shared"

    @property
    def logs(self) -> Path:
        return self.folder / "ray" / "session_latest" / "logs"

    def get(self, path: str, *, token: str | None = None) -> tuple[int, Any]:
        """``GET dashboard_url + path`` with the bearer token (the cluster's by default)."""
        request = urllib.request.Request(
            self.dashboard_url + path,
            headers={"Authorization": f"Bearer {token if token is not None else self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                body = response.read().decode("utf-8")
                status = int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code), error.read().decode("utf-8", errors="replace")
        try:
            return status, json.loads(body)
        except json.JSONDecodeError:
            return status, body

    def get_without_token(self, path: str) -> int:
        try:
            with urllib.request.urlopen(self.dashboard_url + path, timeout=30) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def autoscaler_report(self) -> dict[str, Any]:
        status, body = self.get("/api/cluster_status")
        assert status == 200, f"cluster status answered {status}: {body}"
        report = body["data"]["clusterStatus"].get("autoscalerReport")
        assert report, f"no autoscaler report yet: {body}"
        return dict(report)

    def nodes_of_type(self, node_type: str) -> set[str]:
        mapping = self.autoscaler_report().get("nodeTypeMapping") or {}
        return {node_id for node_id, name in mapping.items() if name == node_type}

    def log_tail(self, name: str, lines: int = 40) -> str:
        path = self.logs / name
        if not path.exists():
            return f"({path} missing)"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def start_fake_cluster(folder: Path) -> FakeCluster:
    import ray._private.services

    node_ip = ray._private.services.get_node_ip_address()
    gcs_port, dashboard_port = free_port(), free_port()
    gcs_address = f"{node_ip}:{gcs_port}"
    cluster = yaml.safe_load((REPO_ROOT / "cluster.yaml").read_text(encoding="utf-8"))
    config_path = folder / "autoscaling.json"
    config_path.write_text(json.dumps(fake_autoscaling_config(cluster, gcs_address)))
    head_resources = dict(cluster["available_node_types"][cluster["head_node_type"]]["resources"])
    # The token of this cluster only (cluster.yaml copies ~/.ray/auth_token; this test
    # leaves that file alone).
    token = secrets.token_hex(16)
    token_file = folder / "auth_token"
    token_file.write_text(token)
    token_file.chmod(0o600)
    venv_bin = str(Path(sys.executable).parent)
    env = {key: value for key, value in os.environ.items() if not key.startswith("RAY_")}
    env.update(
        {CLUSTER_MARK: str(folder)},
        # As cluster.yaml's start commands: token auth, Train runs in the state API.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN_PATH=str(token_file),
        RAY_TRAIN_ENABLE_STATE_TRACKING="1",
        # The fake provider, and an autoscaler that looks every second instead of every 5.
        RAY_FAKE_CLUSTER="1",
        AUTOSCALER_UPDATE_INTERVAL_S="1",
        # Every process of this cluster (workers, Train's controller) talks to it only.
        RAY_ADDRESS=gcs_address,
        # A node whose raylet died registers never: give up on it after a minute (Ray's
        # default: 10 min) so that `ray start` or the autoscaler retries sooner.
        RAY_raylet_start_wait_time_s="60",
        RAY_agent_register_timeout_ms="300000",
        OMP_NUM_THREADS="1",
        # The job's entrypoint `python -m cadc_ray.sweep` runs this virtualenv's Python.
        PATH=f"{venv_bin}{os.pathsep}{env.get('PATH', '')}",
    )
    command = [
        str(Path(venv_bin) / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={gcs_port}",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dashboard_port}",
        f"--ray-client-server-port={free_port()}",
        # Explicit agent ports: with none, the raylet gives its agents 15 s to report the
        # ports they picked and aborts after (too short on a loaded 2-core machine).
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        f"--temp-dir={folder / 'ray'}",
        f"--autoscaling-config={config_path}",
        f"--num-cpus={int(head_resources.pop('CPU'))}",
        f"--num-gpus={int(head_resources.pop('GPU', 0))}",
        f"--resources={json.dumps(head_resources)}",
        f"--object-store-memory={2 * FAKE_NODE_OBJECT_STORE_BYTES}",
        "--disable-usage-stats",
    ]
    with (folder / "ray_start.log").open("wb") as log:
        # A new process session: every process of the cluster inherits it, teardown
        # signals it and nothing else.
        head = subprocess.Popen(
            command, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    return FakeCluster(
        folder=folder,
        gcs_address=gcs_address,
        dashboard_url=f"http://127.0.0.1:{dashboard_port}",
        token=token,
        token_file=token_file,
        env=env,
        head=head,
    )


class HeadExited(Exception):
    """``ray start --head`` exited before the cluster came up."""


def wait_until_up(cluster: FakeCluster) -> None:
    deadline = time.monotonic() + CLUSTER_START_SECONDS
    while time.monotonic() < deadline:
        if cluster.head.poll() is not None:
            log = (cluster.folder / "ray_start.log").read_text(errors="replace")
            raise HeadExited(
                f"`ray start --head` exited:\n{log[-2000:]}\n{cluster.log_tail('raylet.out', 5)}"
            )
        with contextlib.suppress(OSError):
            status, _ = cluster.get("/api/version")
            if status == 200:
                # The autoscaler reports once it has seen the head's resources.
                with contextlib.suppress(AssertionError, KeyError):
                    cluster.autoscaler_report()
                    return
        time.sleep(1.0)
    raise AssertionError(f"the fake cluster did not come up in {CLUSTER_START_SECONDS} s")


def shut_down(cluster: FakeCluster) -> list[int]:
    """Stops every process of the cluster; returns those still alive after SIGTERM, a grace
    period and SIGKILL (an empty list when all are gone)."""
    session_id = cluster.head.pid
    cluster.head.send_signal(signal.SIGTERM)  # `ray start --block` stops its node
    with contextlib.suppress(subprocess.TimeoutExpired):
        cluster.head.wait(timeout=TEARDOWN_SECONDS / 3)
    # What the head leaves: the fake worker nodes (the autoscaler started them detached),
    # job entrypoints (in sessions of their own).
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in cluster_processes(session_id, cluster.folder):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + TEARDOWN_SECONDS / 3
        while cluster_processes(session_id, cluster.folder) and time.monotonic() < deadline:
            time.sleep(0.5)
    with contextlib.suppress(subprocess.TimeoutExpired):
        cluster.head.wait(timeout=5)
    return cluster_processes(session_id, cluster.folder)


def start_and_wait() -> FakeCluster:
    """A fake cluster that is up; ``START_ATTEMPTS`` tries.

    A raylet gives its dashboard agent 15 s (fixed in Ray) to report the port it listens
    on and aborts after; on an overloaded machine the agent's start-up can take longer.
    """
    failures = []
    for _ in range(START_ATTEMPTS):
        # A short folder: Ray's Unix sockets live under it (paths are limited to 107 bytes).
        folder = Path(tempfile.mkdtemp(prefix="cadc-journey-", dir="/tmp"))
        cluster = start_fake_cluster(folder)
        try:
            wait_until_up(cluster)
            return cluster
        except HeadExited as error:
            failures.append(str(error))
            left = shut_down(cluster)
            assert not left, f"processes of a failed start still running: {left}"
            shutil.rmtree(folder, ignore_errors=True)
        except BaseException:
            shut_down(cluster)
            raise
    raise AssertionError(
        f"the fake cluster failed to start {START_ATTEMPTS} times:\n" + "\n".join(failures)
    )


@contextlib.contextmanager
def fake_cluster() -> Iterator[FakeCluster]:
    cluster = start_and_wait()
    passed = False
    try:
        yield cluster
        passed = True
    finally:
        left = shut_down(cluster)
        if passed:
            assert not left, f"processes of the fake cluster still running: {left}"
            shutil.rmtree(cluster.folder, ignore_errors=True)
        else:
            print(f"fake cluster folder kept for inspection: {cluster.folder}", file=sys.stderr)


def copy_code(folder: Path) -> Path:
    """The package and the journey's spec, as ``ray up`` puts the repository on every node.

    The fake nodes share this machine's disk, and so Ray's folder of unpacked job uploads:
    a job's upload would be unpacked again by the GPU node when it starts, under the running
    job, whose working directory it is (seen here: the driver's next ``import torch`` then
    aborts, "Intel oneMKL FATAL ERROR: Cannot load ..."). Code already on the nodes
    (``submit_sweep.sh --code-on-cluster``) is never unpacked.
    """
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO_ROOT / "cadc_ray", folder / "cadc_ray", ignore=ignore)
    (folder / SPEC).parent.mkdir(parents=True)
    shutil.copy2(REPO_ROOT / SPEC, folder / SPEC)
    return folder


def run_script(
    script: Path, args: list[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return run_bash_script(script, args, env, timeout=300)  # a real sweep job runs inside


def wait_for_job(cluster: FakeCluster, submission_id: str) -> dict[str, Any]:
    """The job's record from ``GET /api/jobs/<id>`` once it reached a terminal state."""
    deadline = time.monotonic() + JOB_SECONDS
    while time.monotonic() < deadline:
        status, job = cluster.get(f"/api/jobs/{submission_id}")
        assert status == 200, f"Jobs API answered {status}: {job}"
        if job["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            return dict(job)
        time.sleep(2.0)
    raise AssertionError(f"job {submission_id} not finished after {JOB_SECONDS} s")


def train_worker_nodes(cluster: FakeCluster) -> dict[str, set[str]]:
    """Train run name -> the node ids its workers ran on (Train V2's state API)."""
    status, body = cluster.get("/api/train/v2/runs/v1")
    assert status == 200, f"Train state API answered {status}: {body}"
    nodes: dict[str, set[str]] = {}
    for run in body["train_runs"]:
        for attempt in run["attempts"]:
            for worker in attempt["workers"]:
                nodes.setdefault(run["name"], set()).add(worker["node_id"])
    return nodes


def test_a_sweep_on_the_autoscaling_cluster_scales_up_the_gpu_pool_and_trains_there(
    tmp_path: Path,
) -> None:
    with fake_cluster() as cluster:
        # Token auth is on, and the GPU pool starts empty.
        assert cluster.get_without_token("/api/jobs/") == 401
        assert cluster.get("/api/jobs/", token="not-the-token")[0] == 403
        assert cluster.nodes_of_type(GPU_NODE_TYPE) == set()

        submission_id = f"cadc-journey-{secrets.token_hex(4)}"
        client_env = {**cluster.env, "PYTHON": sys.executable}
        del client_env["RAY_ADDRESS"]  # the Jobs client goes through --address
        submitted = run_script(
            SUBMIT,
            [
                "--address", cluster.dashboard_url,
                "--root", str(cluster.shared_root),
                "--code-on-cluster", str(copy_code(cluster.folder / "code")),
                "--submission-id", submission_id,
                "--no-wait",
                SPEC,
            ],
            client_env,
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr + submitted.stdout

        job = wait_for_job(cluster, submission_id)
        if job["status"] != "SUCCEEDED":
            _, logs = cluster.get(f"/api/jobs/{submission_id}/logs")
            pytest.fail(f"job {job['status']}: {job.get('message')}\n{str(logs)[-4000:]}")

        gpu_nodes = cluster.nodes_of_type(GPU_NODE_TYPE)
        assert gpu_nodes, f"no {GPU_NODE_TYPE} node started: {cluster.autoscaler_report()}"
        trial_runs = {
            name: nodes
            for name, nodes in train_worker_nodes(cluster).items()
            if name.startswith("train-")
        }
        assert len(trial_runs) == 2, f"Train runs of the two trials: {trial_runs}"
        for name, nodes in trial_runs.items():
            assert nodes <= gpu_nodes, f"{name}'s workers ran on {nodes}, GPU nodes {gpu_nodes}"
        # This machine's torch has no CUDA: the workers said so and trained on the CPU.
        assert any(
            CPU_FALLBACK_WARNING in path.read_text(errors="replace")
            for path in cluster.logs.rglob("*")
            if path.is_file() and path.suffix in (".out", ".err", ".log")
        ), f"no worker log says {CPU_FALLBACK_WARNING!r}"

        local = tmp_path / "results"
        fetched = run_script(
            FETCH,
            ["--mounted", "--root", str(cluster.shared_root), SWEEP_NAME, str(local)],
            client_env,
        )
        assert fetched.returncode == 0, fetched.stderr
        with (local / "results.csv").open(newline="") as table:
            rows = list(csv.DictReader(table))
        assert sorted(row["method"] for row in rows) == ["logq", "random"]
        assert all(row["status"] == "finished" for row in rows), rows
        assert all(float(row["test_hr@10_pct"]) >= 0 for row in rows), rows
