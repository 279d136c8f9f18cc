"""The architecture as a test: the import-linter layer contracts hold (and a broken layer really fails), and
no file in a user's working directory can shadow a part of geo3d."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from geo3d.cli.demo import _run_step

from helpers import REPO

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

LINT = REPO / "scripts" / "lint_imports.py"


def _lint(repo: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "scripts" / "lint_imports.py"), str(repo)], capture_output=True,
                          text=True, timeout=300, env=env)


def test_layer_contracts_hold_and_grimp_sees_every_module():
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "0 broken" in r.stdout


def test_pyproject_declares_no_ignored_imports():
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    assert contracts and not [c["name"] for c in contracts if c.get("ignore_imports")]


def _copy_sources(dst: Path) -> Path:
    """The tracked tree copied to dst/geo3d: a second checkout, importable as geo3d with PYTHONPATH=dst."""
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "*.py", "pyproject.toml"], capture_output=True,
                             text=True, check=True).stdout.split()
    for rel in tracked:
        (dst / "geo3d" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / rel, dst / "geo3d" / rel)
    return dst / "geo3d"


def test_a_store_module_importing_a_stage_breaks_the_contract(tmp_path):
    repo = _copy_sources(tmp_path)
    (repo / "features_store" / "leak.py").write_text("from geo3d.train import trainer  # a layer violation\n")
    r = _lint(repo, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert r.returncode == 1 and "BROKEN" in r.stdout
    assert "geo3d.features_store.leak -> geo3d.train.trainer" in r.stdout


SHADOWS = ("train", "precompute", "features_store", "evaluation", "cli", "data", "config")


@pytest.mark.slow  # real processes: sys.path at start-up is what is tested
def test_user_files_in_the_working_directory_do_not_shadow_geo3d(tmp_path):
    """A user's train.py (etc.) beside their own scripts: every geo3d module still imports, python -m geo3d.cli
    still runs (cwd is sys.path[0] there), and geo3d demo's child processes run with -P."""
    for name in SHADOWS:
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('user file {name}.py was imported')\n")
    env = dict(os.environ)
    code = ("import geo3d.policy.pretrained, geo3d.train.cli, geo3d.precompute.run, geo3d.features_store.verify, "
            "geo3d.evaluation.server, geo3d.cli; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "geo3d.cli", "train", "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--compressor" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow  # a real `geo3d` child process
@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P needs 3.11")
def test_a_demo_step_runs_from_a_directory_whose_files_would_shadow_geo3d(tmp_path, monkeypatch):
    """`geo3d demo` starts each step as `python -P -m geo3d.cli ...`: a user's geo3d.py in the working directory
    (which plain `python -m` would import instead of the package) does not reach the child."""
    (tmp_path / "geo3d.py").write_text("raise SystemExit('the user file geo3d.py was imported')\n")
    monkeypatch.chdir(tmp_path)
    _run_step("help", ["train", "--help"], tmp_path)
    assert "--compressor" in (tmp_path / "help.log").read_text()
    r = subprocess.run([sys.executable, "-m", "geo3d.cli", "train", "--help"], capture_output=True, text=True)
    assert r.returncode != 0 and "the user file geo3d.py was imported" in r.stderr  # what -P prevents
