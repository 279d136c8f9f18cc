"""Check the layer contracts (pyproject.toml [tool.importlinter]) on geo3d as a wheel lays it out.

grimp (import-linter's graph builder) finds a package's modules by walking its folder. In a checkout
geo3d.train is train/ through pyproject's package-dir (and geo3d/__init__'s path entry), which a folder walk
of geo3d/ cannot see. So this script stages the installed layout in a temp dir (geo3d/ with symlinks to the
card folders, per package-dir), checks that grimp sees every module of every mapped folder, and runs
`lint-imports` there. Exit 0: contracts kept; 1: a contract is broken or a module is invisible.

    python scripts/lint_imports.py            # what `make lint-imports` and tests/test_layers.py run
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


def stage(root: Path) -> Path:
    """<root>/geo3d: every entry of geo3d/ and every mapped folder, as symlinks (the wheel's tree)."""
    pkg = root / "geo3d"
    pkg.mkdir()
    for entry in (REPO / "geo3d").iterdir():
        if entry.name != "__pycache__":
            (pkg / entry.name).symlink_to(entry)
    for name, folder in package_dirs(REPO / "pyproject.toml").items():
        parts = name.split(".")
        assert parts[0] == "geo3d" and len(parts) == 2, f"package-dir entry {name} is not geo3d.<name>"
        (pkg / parts[1]).symlink_to(REPO / folder)
    return root


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
    with tempfile.TemporaryDirectory() as tmp:
        root = stage(Path(tmp))
        env = {**os.environ, "PYTHONPATH": str(root)}
        probe = ("import grimp, json; g = grimp.build_graph('geo3d', cache_dir=None); "
                 "print(json.dumps(sorted(g.modules)))")
        seen = subprocess.run([sys.executable, "-c", probe], cwd=tmp, env=env, capture_output=True, text=True)
        if seen.returncode:
            print(seen.stderr, file=sys.stderr)
            return 1
        import json

        missing = sorted(source_modules() - set(json.loads(seen.stdout)))
        if missing:
            print(f"grimp does not see {len(missing)} module(s): {missing}", file=sys.stderr)
            return 1
        lint = Path(sys.executable).with_name("lint-imports")
        cmd = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
        r = subprocess.run([*cmd, str(REPO / "pyproject.toml"), "--no-cache"], cwd=tmp, env=env)
        return r.returncode


if __name__ == "__main__":
    sys.exit(main())
