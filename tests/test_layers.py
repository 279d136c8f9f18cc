"""The architecture as a test: the import-linter layer contracts hold (and a broken layer really fails), and
no file in a user's working directory can shadow a part of geo3d."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = REPO / "scripts" / "lint_imports.py"


def _lint(repo: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(repo / "scripts" / "lint_imports.py")], capture_output=True,
                          text=True, timeout=300)


def test_layer_contracts_hold_and_grimp_sees_every_module():
    r = _lint(REPO)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "0 broken" in r.stdout


def _copy_sources(dst: Path) -> Path:
    for name in ("geo3d", "train", "precompute", "features_store", "evaluation", "scripts"):
        shutil.copytree(REPO / name, dst / name, symlinks=True,  # geo3d/train -> ../train stays relative
                        ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", dst / "pyproject.toml")
    return dst


def test_a_store_module_importing_a_stage_breaks_the_contract(tmp_path):
    repo = _copy_sources(tmp_path / "repo")
    (repo / "features_store" / "leak.py").write_text("from geo3d.train import inference  # a layer violation\n")
    r = _lint(repo)
    assert r.returncode == 1 and "BROKEN" in r.stdout
    assert "geo3d.features_store.leak -> geo3d.train.inference" in r.stdout


SHADOWS = ("train", "precompute", "features_store", "evaluation", "cli", "data", "config")


def test_user_files_in_the_working_directory_do_not_shadow_geo3d(tmp_path):
    """A user's train.py (etc.) beside their own scripts: every geo3d module still imports, python -m geo3d.cli
    still runs (cwd is sys.path[0] there), and geo3d demo's child processes run with -P."""
    for name in SHADOWS:
        (tmp_path / f"{name}.py").write_text(f"raise SystemExit('user file {name}.py was imported')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    code = ("import geo3d.train.inference, geo3d.train.cli, geo3d.precompute.run, geo3d.features_store.verify, "
            "geo3d.evaluation.server, geo3d.cli; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "geo3d.cli", "train", "--help"], cwd=tmp_path, env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0 and "--compressor" in r.stdout, r.stdout + r.stderr


@pytest.mark.skipif(sys.version_info < (3, 11), reason="python -P needs 3.11")
def test_demo_children_do_not_put_the_working_directory_on_sys_path():
    from geo3d.cli import demo

    src = Path(demo.__file__).read_text()
    assert '"-P"' in src  # the flag is passed to every step's interpreter
    r = subprocess.run([sys.executable, "-P", "-c", "import sys; print(repr(sys.path[0]))"], capture_output=True,
                       text=True, cwd="/")
    assert r.stdout.strip() not in ("''", "'/'")
