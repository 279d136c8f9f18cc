"""A plain wheel install holds every module, config, sbatch template and the demo data, and runs from a
working directory full of files named like geo3d's parts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from helpers import REPO

sys.path.insert(0, str(REPO / "scripts"))
from lint_imports import source_modules  # noqa: E402  (the one list of modules a wheel must hold)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("src")
    tracked = subprocess.run(["git", "-C", str(REPO), "ls-files"], capture_output=True, text=True, check=True)
    for rel in tracked.stdout.splitlines():
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(out)], check=True, capture_output=True, timeout=600)
    return next(out.glob("geo3d-*.whl"))


def test_wheel_holds_every_module_and_shipped_folder(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    files = {n[:-3].replace("/", ".").removesuffix(".__init__") for n in names if n.endswith(".py")}
    assert source_modules() <= files, sorted(source_modules() - files)
    assert not {n.split("/")[0] for n in names} - {"geo3d", wheel.name.split("-")[0] + "-0.1.0.dist-info"}
    for shipped in ("geo3d/configs/data.yaml", "geo3d/configs/model/tiny.yaml", "geo3d/scripts/slurm/train.sbatch",
                    "geo3d/scripts/slurm/job_lib.sh", "geo3d/demo_data/libero_spatial_no_noops_1.0.0_lerobot/meta/info.json"):
        assert shipped in names, shipped


def test_wheel_install_runs_from_a_directory_with_shadowing_files(wheel, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    for name in ("train", "precompute", "evaluation", "features_store"):
        (work / f"{name}.py").write_text("raise SystemExit('shadowed')\n")
    env = {**os.environ, "PYTHONPATH": str(site)}
    code = ("import geo3d, geo3d.core.config as c, geo3d.data.suites as s, geo3d.cli.slurm.render as r, "
            "geo3d.policy.pretrained; print(geo3d.__file__, c.CONFIG_DIR, s.DEMO_DATA_ROOT, r.TEMPLATE_DIR)")
    out = subprocess.run([sys.executable, "-c", code], cwd=work, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    paths = out.stdout.split()
    assert all(p.startswith(str(site)) for p in paths), paths  # nothing from the checkout
    r = subprocess.run([sys.executable, "-m", "geo3d.cli", "train", "--suite", "demo", "--dry-run"], cwd=work,
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and '"params"' in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
