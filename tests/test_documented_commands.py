"""The commands README.md tells users to type, run as written.

Every command line of README.md's code blocks is read from the Markdown and must be
covered here: either run (``cadc_ray.run`` / ``cadc_ray.sweep``: from a fresh temporary
working directory holding a copy of ``configs/`` and ``tune_specs/``, with the documented
relative paths and only size-reducing ``--set`` overrides appended), or named in
:data:`NOT_RUN_HERE` with the reason and the test that checks it offline. A command added
to the README without either fails :func:`test_every_readme_command_is_covered`.

The commands run in this process through their ``main(argv)`` (the Ray session fixture is
the cluster they join, as ``RAY_ADDRESS`` would make them): Train workers and Tune trials
still run in other processes with other working directories, which is what broke relative
paths before.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cadc_ray import run
from cadc_ray.sweep import cli as sweep_cli
from cadc_ray.sweep.driver import expected_trials
from cadc_ray.sweep.spec import load_spec

REPO_ROOT = Path(__file__).resolve().parents[1]
README = REPO_ROOT / "README.md"

# Appended to every documented command that runs here: smaller data and fewer epochs,
# nothing else (a later --set wins over an earlier one).
SMALL_SYNTHETIC = (
    "data.synthetic.num_users=300",
    "data.synthetic.num_items=200",
    "data.synthetic.num_interactions=6000",
)
FEW_EPOCHS = ("pretrain.epochs=2", "train.epochs=2")

NOT_RUN_HERE: dict[str, str] = {
    "bash scripts/setup.sh": "CI's .ci/run runs it as written before the tests",
    "bash scripts/test.sh": "CI's .ci/run runs it as written (this test is part of it)",
    'pip install -e ".[aws]"': "installs boto3 for `ray up` on AWS: needs the network",
    "ray get-auth-token --generate": "writes ~/.ray/auth_token; tests/test_cluster_safety.py",
    "ray up cluster.yaml": "needs a cloud; tests/test_cluster_config.py validates cluster.yaml "
    "with Ray's own offline validation",
    "ray dashboard cluster.yaml": "needs a running cluster",
    "scripts/submit_sweep.sh": "needs a running cluster; tests/test_cluster_scripts.py "
    "checks its arguments and the job it would submit",
    "scripts/fetch_results.sh": "needs a running cluster; tests/test_cluster_scripts.py",
    "ray down cluster.yaml": "needs a cloud",
}


def readme_commands(text: str) -> list[str]:
    """Command lines of the README's code blocks (fenced, or indented by 4 spaces),
    comments dropped, ``a && b`` split into its commands."""
    commands: list[str] = []
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.DOTALL)
    indented = re.findall(r"(?:^|\n\n)((?:    \S[^\n]*\n?)+)", text)
    for block in blocks + [re.sub(r"^    ", "", b, flags=re.MULTILINE) for b in indented]:
        for line in block.splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if not line or line.startswith("#"):
                continue
            commands.extend(part.strip() for part in line.split("&&"))
    return commands


def classify(command: str) -> str:
    """``run`` / ``sweep`` (run here) or the NOT_RUN_HERE key that covers it."""
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words = words[1:]  # environment assignments
    if words[:3] in (
        [".venv/bin/python", "-m", "cadc_ray.run"],
        ["python", "-m", "cadc_ray.run"],
    ):
        return "run"
    if words[:3] in (
        [".venv/bin/python", "-m", "cadc_ray.sweep"],
        ["python", "-m", "cadc_ray.sweep"],
    ):
        return "sweep"
    for known in NOT_RUN_HERE:
        if command.startswith(known):
            return known
    raise AssertionError(
        f"README command not covered by tests/test_documented_commands.py: {command!r}"
    )


def documented(kind: str) -> list[str]:
    return [c for c in readme_commands(README.read_text(encoding="utf-8")) if classify(c) == kind]


def test_every_readme_command_is_covered() -> None:
    commands = readme_commands(README.read_text(encoding="utf-8"))
    kinds = [classify(command) for command in commands]  # raises on an unknown command
    assert kinds.count("run") >= 2 and kinds.count("sweep") >= 1
    assert "bash scripts/setup.sh" in commands and "bash scripts/test.sh" in commands


def test_readme_parser_reads_fenced_and_indented_blocks() -> None:
    text = (
        "Intro\n\n```bash\nbash scripts/setup.sh && .venv/bin/python -m cadc_ray.run a.yaml\n"
        "# a comment\n```\n\nThen:\n\n    ray up cluster.yaml        # from the root\n"
        "    ray down cluster.yaml\n"
    )
    assert readme_commands(text) == [
        "bash scripts/setup.sh",
        ".venv/bin/python -m cadc_ray.run a.yaml",
        "ray up cluster.yaml",
        "ray down cluster.yaml",
    ]
    with pytest.raises(AssertionError, match="not covered"):
        classify("rm -rf /")


@pytest.fixture
def fresh_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A new user's working directory: the shipped configs and specs, nothing else.

    The commands configure the console (logging handlers, environment variables): both
    are put back afterwards so that later tests see the process as it was.
    """
    for folder in ("configs", "tune_specs"):
        shutil.copytree(REPO_ROOT / folder, tmp_path / folder)
    monkeypatch.chdir(tmp_path)
    package_logger = logging.getLogger("cadc_ray")
    saved = (list(package_logger.handlers), package_logger.propagate, package_logger.level)
    root_level = logging.getLogger().level
    saved_env = dict(os.environ)
    yield tmp_path
    package_logger.handlers[:], package_logger.propagate = saved[0], saved[1]
    package_logger.setLevel(saved[2])
    logging.getLogger().setLevel(root_level)
    os.environ.clear()
    os.environ.update(saved_env)


def _argv(command: str, monkeypatch: pytest.MonkeyPatch, shared: Path | None) -> list[str]:
    """The documented command's arguments after ``python -m MODULE``; environment
    assignments become the test's environment (a placeholder data folder: the shared one)."""
    words = shlex.split(command)
    while re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        name, _, value = words.pop(0).partition("=")
        if name == "CADC_DATA_DIR":
            assert shared is not None
            value = str(shared)
        monkeypatch.setenv(name, value)
    return words[3:]


def _with_sets(argv: list[str], sets: tuple[str, ...]) -> list[str]:
    return argv + [item for value in sets for item in ("--set", value)]


def _check_results(results: dict[str, Any], cwd: Path) -> None:
    for split in ("test", "val"):
        metrics = results[split]
        assert set(metrics) == {"hr@10", "ndcg@10"}
        assert 0.0 <= metrics["ndcg@10"] <= metrics["hr@10"] <= 1.0
    assert results["epochs_run"] >= 1 and results["total_seconds"] > 0
    # A relative output_root lands in the command's working directory ...
    prepared = Path(results["prepared_dir"])
    assert prepared.is_relative_to(cwd / "runs")
    manifest = json.loads((prepared / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["num_users"] == results["num_users"] > 0
    # ... and every path the workers received was absolute.
    assert Path(results["config"]["output_root"]).is_absolute()


@pytest.mark.ray
@pytest.mark.parametrize(
    ("in_process", "placement"),
    [("never", "worker_group"), ("auto", "ray_task")],
    ids=["train-worker-group", "local-mode-in-a-ray-task"],
)
def test_readme_first_run_command(
    ray_session: None,
    fresh_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    in_process: str,
    placement: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    command = documented("run")[0]
    assert "configs/synthetic.yaml" in command
    argv = _with_sets(
        _argv(command, monkeypatch, None),
        (*SMALL_SYNTHETIC, *FEW_EPOCHS, f"resources.in_process={in_process}"),
    )
    assert run.main(argv) == 0
    out = capsys.readouterr().out
    results_file = fresh_cwd / "runs" / "synthetic-cadc" / "results.json"
    assert f"results: {results_file}" in out
    results = json.loads(results_file.read_text(encoding="utf-8"))
    _check_results(results, fresh_cwd)
    assert results["num_workers"] == 1 and results["method"] == "cadc"
    # The suite's shared Ray is not the command's own: one CPU worker trains in a Ray
    # task (in Train's local mode), or in a worker group when asked to.
    assert results["stage_placement"] == {"pretrain": placement, "ttnn": placement}
    assert results["in_process"] is False
    assert results["teacher_test_percent"] is not None


@pytest.mark.ray
def test_readme_other_run_commands(
    ray_session: None,
    fresh_cwd: Path,
    monkeypatch: pytest.MonkeyPatch,
    shared_data: Path,
) -> None:
    """The README's other run commands (a baseline; a real dataset through CADC_DATA_DIR),
    in-process workers, two epochs (one for the real dataset)."""
    for command in documented("run")[1:]:
        argv = _argv(command, monkeypatch, shared_data)
        real = "ml-" in argv[0]
        sets = ("pretrain.epochs=1", "train.epochs=1") if real else (*SMALL_SYNTHETIC, *FEW_EPOCHS)
        argv = _with_sets(argv, (*sets, "resources.num_workers=0"))
        assert run.main(argv) == 0, command
        config = yaml.safe_load((fresh_cwd / argv[0]).read_text(encoding="utf-8"))
        overrides = dict(argv[i + 1].split("=", 1) for i, a in enumerate(argv) if a == "--set")
        name = overrides.get("name", config["name"])
        results = json.loads((fresh_cwd / "runs" / name / "results.json").read_text())
        _check_results(results, fresh_cwd)
        assert results["method"] == overrides.get("method", config["method"])


@pytest.mark.ray
def test_readme_quick_start_sweep(
    ray_session: None, fresh_cwd: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = documented("sweep")[0]
    assert command.endswith("tune_specs/ratio.yaml")
    argv = _with_sets(_argv(command, monkeypatch, None), (*SMALL_SYNTHETIC, *FEW_EPOCHS))
    assert sweep_cli.main(argv) == 0
    out_dir = fresh_cwd / "runs" / "sweeps" / "ratio"
    rows = (out_dir / "results.csv").read_text(encoding="utf-8").strip().splitlines()
    spec = load_spec(fresh_cwd / "tune_specs" / "ratio.yaml")
    assert len(rows) == 1 + expected_trials(spec) >= 1 + 13  # header + one row per trial
    assert "| method" in (out_dir / "results.md").read_text(encoding="utf-8")
    for plot in ("quality_vs_ratio.png", "quality_vs_time.png"):
        assert (out_dir / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    best = yaml.safe_load((out_dir / "best_config.yaml").read_text(encoding="utf-8"))
    assert isinstance(best, dict) and best
