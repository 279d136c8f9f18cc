"""Check the layer contracts (pyproject.toml [tool.importlinter]) and that import-linter sees every module.

grimp (import-linter's graph builder) finds a package's modules by walking its folder (following symlinks).
The card's folders are geo3d's subpackages through pyproject's package-dir (a wheel) and, in a checkout,
through the symlinks geo3d/train -> ../train, geo3d/precompute, geo3d/features_store, geo3d/evaluation, so
plain `lint-imports` in a checkout checks the real tree. This script also fails when grimp misses a module of a
mapped folder (e.g. a symlink lost by a copy that dereferences or drops them), which `lint-imports` alone would
not notice. Exit 0: contracts kept; 1: a contract is broken or a module is invisible.

    python scripts/lint_imports.py            # what `make lint-imports` and tests/test_layers.py run
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]


def package_dirs(pyproject: Path) -> dict[str, str]:
    """pyproject's package-dir entries for Python packages (geo3d.x -> folder), data-only folders left out."""
    cfg = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    mapped = cfg.get("package-dir", {})
    return {pkg: folder for pkg, folder in mapped.items() if (REPO / folder / "__init__.py").is_file()}


def source_modules() -> set[str]:
    """Every module a wheel holds: geo3d/**.py and each mapped folder's **.py, as dotted names."""
    out = set()
    trees = {"geo3d": REPO / "geo3d", **{k: REPO / v for k, v in package_dirs(REPO / "pyproject.toml").items()}}
    for name, folder in trees.items():
        for f in folder.rglob("*.py"):
            rel = f.relative_to(folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.add(".".join([name, *parts]))
    return out


def main() -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    probe = ("import grimp, json; g = grimp.build_graph('geo3d', cache_dir=None); "
             "print(json.dumps(sorted(g.modules)))")
    seen = subprocess.run([sys.executable, "-c", probe], cwd=REPO, env=env, capture_output=True, text=True)
    if seen.returncode:
        print(seen.stderr, file=sys.stderr)
        return 1
    missing = sorted(source_modules() - set(json.loads(seen.stdout)))
    if missing:
        print(f"grimp does not see {len(missing)} module(s): {missing}; geo3d/<folder> must be a symlink to "
              f"../<folder> for every package-dir entry (git checkout -- geo3d)", file=sys.stderr)
        return 1
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run([*cmd, str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
