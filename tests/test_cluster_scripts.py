"""scripts/submit_sweep.sh and scripts/fetch_results.sh, against a fake `ray` on PATH.

No cluster is involved: a stub ``ray`` records its arguments and environment, so the
tests check the exact ``ray job submit`` / ``ray rsync-down`` calls the scripts make and
that bad input stops them before anything is sent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_bash_script

REPO_ROOT = Path(__file__).resolve().parents[1]
SUBMIT = REPO_ROOT / "scripts" / "submit_sweep.sh"
FETCH = REPO_ROOT / "scripts" / "fetch_results.sh"
SPEC = "tune_specs/ratio.yaml"  # a committed spec: the job only sees the repository

FAKE_RAY = """#!/usr/bin/env bash
# Records argv (one JSON document per call) and the auth mode it ran with.
python3 - "$@" <<'PY' >> "$FAKE_RAY_LOG"
import json, os, sys
print(json.dumps({"argv": sys.argv[1:], "auth_mode": os.environ.get("RAY_AUTH_MODE")}))
PY
exit "${FAKE_RAY_EXIT:-0}"
"""


@pytest.fixture
def fake_env(tmp_path: Path) -> dict[str, str]:
    """PATH with a stub `ray`, a HOME holding a dashboard token, the test's Python."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ray = bin_dir / "ray"
    ray.write_text(FAKE_RAY, encoding="utf-8")
    ray.chmod(0o755)
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("0123456789abcdef", encoding="utf-8")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("RAY_", "CADC_CLUSTER_ROOT"))
    }
    env.update(
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
        HOME=str(home),
        PYTHON=sys.executable,
        FAKE_RAY_LOG=str(tmp_path / "ray-calls.jsonl"),
    )
    return env


def ray_calls(env: dict[str, str]) -> list[dict[str, object]]:
    log = Path(env["FAKE_RAY_LOG"])
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]


def run_script(
    script: Path, args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT
) -> subprocess.CompletedProcess[str]:
    return run_bash_script(script, args, env, cwd=cwd, timeout=120)


def test_submit_sends_one_job_with_runtime_env_and_shared_outputs(
    fake_env: dict[str, str],
) -> None:
    done = run_script(SUBMIT, ["--submission-id", "sweep-test", SPEC, "--", "--resume"], fake_env)
    assert done.returncode == 0, done.stderr
    (call,) = ray_calls(fake_env)
    assert call["auth_mode"] == "token"
    argv = call["argv"]
    assert isinstance(argv, list)
    separator = argv.index("--")
    options, entrypoint = argv[:separator], argv[separator + 1 :]
    assert options[:2] == ["job", "submit"]
    assert options[options.index("--address") + 1] == "http://127.0.0.1:8265"
    assert options[options.index("--working-dir") + 1] == "."
    assert options[options.index("--submission-id") + 1] == "sweep-test"
    runtime_env = json.loads(options[options.index("--runtime-env-json") + 1])
    assert runtime_env["env_vars"]["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"
    assert runtime_env["env_vars"]["CADC_DATA_DIR"] == "/mnt/cadc/data"
    assert {".git", ".venv", "runs"} <= set(runtime_env["excludes"])
    assert entrypoint == [
        "python",
        "-m",
        "cadc_ray.sweep",
        SPEC,
        "--set",
        "output_dir=/mnt/cadc/sweeps/ratio",
        "--set",
        "output_root=/mnt/cadc/runs",
        "--resume",
    ]


def test_submit_accepts_address_root_and_no_wait(fake_env: dict[str, str]) -> None:
    done = run_script(
        SUBMIT,
        ["--address", "http://127.0.0.1:9999", "--root", "/shared", "--no-wait", SPEC],
        fake_env,
    )
    assert done.returncode == 0, done.stderr
    (call,) = ray_calls(fake_env)
    argv = call["argv"]
    assert isinstance(argv, list)
    assert "--no-wait" in argv[: argv.index("--")]
    assert argv[argv.index("--address") + 1] == "http://127.0.0.1:9999"
    assert "output_dir=/shared/sweeps/ratio" in argv
    assert str(argv[argv.index("--submission-id") + 1]).startswith("cadc-sweep-ratio-")


def test_submit_runs_the_code_already_on_the_cluster_without_uploading(
    fake_env: dict[str, str],
) -> None:
    """--code-on-cluster: Ray's `local://` working dir (cluster.yaml's file_mounts put the
    repository on every node), no `--working-dir` upload."""
    done = run_script(SUBMIT, ["--code-on-cluster", "/home/ubuntu/cadc_ray", SPEC], fake_env)
    assert done.returncode == 0, done.stderr
    (call,) = ray_calls(fake_env)
    argv = call["argv"]
    assert isinstance(argv, list)
    options = argv[: argv.index("--")]
    assert "--working-dir" not in options
    runtime_env = json.loads(options[options.index("--runtime-env-json") + 1])
    assert runtime_env["working_dir"] == "local:///home/ubuntu/cadc_ray"
    assert "excludes" not in runtime_env
    assert runtime_env["env_vars"]["RAY_TRAIN_ENABLE_STATE_TRACKING"] == "1"
    assert argv[argv.index("--") + 1 :][:4] == ["python", "-m", "cadc_ray.sweep", SPEC]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--code-on-cluster", "cadc_ray", SPEC], "--code-on-cluster must be an absolute path"),
        (["tune_specs/no-such-spec.yaml"], "spec file not found"),
        (["/etc/hostname"], "outside the repository"),
        (["--root", "relative/dir", SPEC], "--root must be an absolute path"),
        (["--frobnicate", SPEC], "unknown option --frobnicate"),
        ([SPEC, "configs/synthetic.yaml"], "one SPEC only"),
    ],
)
def test_submit_rejects_bad_input_before_calling_ray(
    fake_env: dict[str, str], args: list[str], message: str
) -> None:
    done = run_script(SUBMIT, args, fake_env)
    assert done.returncode == 2
    assert message in done.stderr
    assert ray_calls(fake_env) == []


def test_submit_stops_when_the_spec_check_fails(fake_env: dict[str, str], tmp_path: Path) -> None:
    """A spec the sweep CLI rejects (`--check` exits non-zero) is never submitted."""
    failing_python = tmp_path / "bin" / "python-check-fails"
    failing_python.write_text(
        "#!/usr/bin/env bash\necho 'spec error: space.method: bad' >&2\nexit 2\n",
        encoding="utf-8",
    )
    failing_python.chmod(0o755)
    done = run_script(SUBMIT, [SPEC], {**fake_env, "PYTHON": str(failing_python)})
    assert done.returncode == 2
    assert "spec error: space.method: bad" in done.stderr
    assert "nothing was submitted" in done.stderr
    assert ray_calls(fake_env) == []


def test_submit_needs_the_dashboard_token(fake_env: dict[str, str]) -> None:
    (Path(fake_env["HOME"]) / ".ray" / "auth_token").unlink()
    done = run_script(SUBMIT, [SPEC], fake_env)
    assert done.returncode == 2
    assert "ray get-auth-token --generate" in done.stderr
    assert ray_calls(fake_env) == []


def test_submit_reports_a_failed_job(fake_env: dict[str, str]) -> None:
    done = run_script(SUBMIT, [SPEC], {**fake_env, "FAKE_RAY_EXIT": "1"})
    assert done.returncode == 1
    assert "ray dashboard cluster.yaml" in done.stderr


def test_fetch_rsyncs_the_sweep_folder_from_the_head(
    fake_env: dict[str, str], tmp_path: Path
) -> None:
    local = tmp_path / "results"
    done = run_script(FETCH, ["ratio", str(local)], fake_env)
    assert done.returncode == 0, done.stderr
    (call,) = ray_calls(fake_env)
    assert call["argv"] == [
        "rsync-down",
        "cluster.yaml",
        "/mnt/cadc/sweeps/ratio/",
        f"{local}/",
    ]
    assert local.is_dir()


def test_fetch_to_s3_archives_on_the_head_first(fake_env: dict[str, str], tmp_path: Path) -> None:
    local = tmp_path / "results"
    done = run_script(
        FETCH, ["--to-s3", "s3://bucket/cadc/", "--reports-only", "ratio", str(local)], fake_env
    )
    assert done.returncode == 0, done.stderr
    calls = [call["argv"] for call in ray_calls(fake_env)]
    assert calls[0] == [
        "exec",
        "cluster.yaml",
        "aws s3 sync '/mnt/cadc/sweeps/ratio' 's3://bucket/cadc/ratio'",
    ]
    fetched = [argv[2] for argv in calls[1:]]  # type: ignore[index]
    assert "/mnt/cadc/sweeps/ratio/results.csv" in fetched
    assert "/mnt/cadc/sweeps/ratio/plots" in fetched
    assert not any(str(path).endswith(("/train", "/tune")) for path in fetched)


def test_fetch_from_s3_needs_no_cluster(fake_env: dict[str, str], tmp_path: Path) -> None:
    done = run_script(
        FETCH,
        [
            "--dry-run",
            "--cluster",
            "missing.yaml",
            "--from-s3",
            "s3://bucket/cadc",
            "ratio",
            str(tmp_path / "r"),
        ],
        fake_env,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split() == [
        "aws",
        "s3",
        "sync",
        "s3://bucket/cadc/ratio",
        str(tmp_path / "r"),
    ]
    assert ray_calls(fake_env) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["../etc"], "plain folder name"),
        (["a b"], "plain folder name"),
        (["--to-s3", "https://x", "ratio"], "s3://bucket/prefix"),
        (["--to-s3", "s3://a", "--from-s3", "s3://b", "ratio"], "exclude each other"),
        (["--cluster", "missing.yaml", "ratio"], "cluster config not found"),
    ],
)
def test_fetch_rejects_bad_input(
    fake_env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    done = run_script(FETCH, args, fake_env, cwd=REPO_ROOT)
    assert done.returncode == 2
    assert message in done.stderr
    assert ray_calls(fake_env) == []


def _sweep_folder(root: Path, name: str = "ratio") -> Path:
    """A finished sweep's folder on a "shared" root: tables, a plot and Tune/Train state."""
    folder = root / "sweeps" / name
    (folder / "plots").mkdir(parents=True)
    (folder / "tune").mkdir()
    (folder / "results.csv").write_text("trial_id,method\nabc,cadc\n", encoding="utf-8")
    (folder / "plots" / "hr.png").write_bytes(b"png")
    (folder / "tune" / "experiment_state.json").write_text("{}", encoding="utf-8")
    return folder


def test_fetch_mounted_copies_from_the_shared_folder_without_the_cluster(
    fake_env: dict[str, str], tmp_path: Path
) -> None:
    """--mounted: the shared root is mounted here (or this is the head): a plain copy, no
    cluster config, no `ray rsync-down`."""
    root, local = tmp_path / "shared", tmp_path / "results"
    _sweep_folder(root)
    done = run_script(
        FETCH,
        ["--mounted", "--cluster", "missing.yaml", "--root", str(root), "ratio", str(local)],
        fake_env,
    )
    assert done.returncode == 0, done.stderr
    assert (local / "results.csv").read_text(encoding="utf-8").startswith("trial_id,method")
    assert (local / "plots" / "hr.png").read_bytes() == b"png"
    assert (local / "tune" / "experiment_state.json").is_file()
    assert ray_calls(fake_env) == []


def test_fetch_mounted_reports_only_leaves_the_state_behind(
    fake_env: dict[str, str], tmp_path: Path
) -> None:
    root, local = tmp_path / "shared", tmp_path / "results"
    _sweep_folder(root)
    done = run_script(
        FETCH, ["--mounted", "--reports-only", "--root", str(root), "ratio", str(local)], fake_env
    )
    assert done.returncode == 0, done.stderr
    assert sorted(path.name for path in local.iterdir()) == ["plots", "results.csv"]
    assert "best_config.yaml not fetched (missing)" in done.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--mounted", "--root", "{root}", "nope"], "no sweep folder"),
        (["--mounted", "--to-s3", "s3://b/p", "--root", "{root}", "ratio"], "excludes --to-s3"),
    ],
)
def test_fetch_mounted_rejects_a_missing_sweep_and_s3(
    fake_env: dict[str, str], tmp_path: Path, args: list[str], message: str
) -> None:
    root = tmp_path / "shared"
    _sweep_folder(root)
    done = run_script(FETCH, [arg.format(root=root) for arg in args], fake_env)
    assert done.returncode == 2
    assert message in done.stderr
