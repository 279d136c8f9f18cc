"""Check the layer contracts (pyproject.toml [tool.importlinter]) and that import-linter sees every module.

The checkout root is the package geo3d (pyproject package-dir `geo3d = "."`), so plain `lint-imports` in a
checkout with geo3d installed (`pip install -e .`) walks the real tree. This script also fails when grimp (the
graph builder behind import-linter) misses a module of a listed package, which `lint-imports` alone would not
notice. Exit 0: contracts kept; 1: a contract is broken or a module is invisible.

    python scripts/lint_imports.py            # what `make lint-imports` and tests/test_layers.py run
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parents[1]


def source_modules(repo: Path = REPO) -> set[str]:
    """Every module a wheel holds, as dotted names: the .py files of each package pyproject lists."""
    packages = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    out = set()
    for pkg in packages:
        folder = repo.joinpath(*pkg.split(".")[1:])
        for f in folder.glob("*.py"):
            out.add(pkg if f.stem == "__init__" else f"{pkg}.{f.stem}")
    return out


def main(repo: Path = REPO) -> int:
    probe = ("import grimp, json; g = grimp.build_graph('geo3d', cache_dir=None); "
             "print(json.dumps(sorted(g.modules)))")
    seen = subprocess.run([sys.executable, "-c", probe], cwd=repo, capture_output=True, text=True)
    if seen.returncode:
        print(seen.stderr, file=sys.stderr)
        return 1
    missing = sorted(source_modules(repo) - set(json.loads(seen.stdout)))
    if missing:
        print(f"grimp does not see {len(missing)} module(s): {missing}; is geo3d installed from this checkout "
              f"(pip install -e .)?", file=sys.stderr)
        return 1
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    return subprocess.run([*cmd, str(repo / "pyproject.toml"), "--no-cache"], cwd=repo).returncode


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else REPO))
