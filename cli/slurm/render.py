"""Turn the sbatch templates in scripts/slurm/ into concrete scripts.

A template is plain bash with marker lines that rendering replaces: `# @SBATCH` (the `#SBATCH` directives),
`# @SETTINGS` (shell variables, shell-quoted), `# @SETUP` (environment activation lines) and `# @LIB`
(scripts/slurm/job_lib.sh inlined, so a rendered script is self-contained and records exactly what ran).
The body below the markers only reads variables, so nothing site-specific lives in a template.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Iterable, Mapping, Sequence, Union

from geo3d.core.config import PACKAGE_ROOT
from geo3d.core.errors import Geo3dError

TEMPLATE_DIR = PACKAGE_ROOT / "scripts" / "slurm"
JOB_LIB = "job_lib.sh"
Value = Union[str, int, float, Sequence[str]]


def template_text(name: str) -> str:
    path = TEMPLATE_DIR / name
    if not path.is_file():
        raise Geo3dError(f"sbatch template missing: {path}; geo3d submit renders the templates of its checkout "
                         "(install it editable: `make install` or `pip install -e .`)")
    return path.read_text()


def shell_value(value: Value) -> str:
    """A bash right-hand side: scalars quoted, sequences as a bash array."""
    if isinstance(value, (list, tuple)):
        return "(" + " ".join(shlex.quote(str(v)) for v in value) + ")"
    return shlex.quote(str(value))


def settings_block(settings: Mapping[str, Value]) -> str:
    return "\n".join(f"{name}={shell_value(value)}" for name, value in settings.items())


def sbatch_block(options: Iterable[str]) -> str:
    lines = []
    for opt in options:
        if "\n" in opt or not opt.startswith("-"):
            raise Geo3dError(f"bad sbatch option {opt!r} (slurm.extra_sbatch): one option per entry, starting "
                             "with '-', e.g. ['--exclusive', '--mail-type=FAIL']")
        lines.append(f"#SBATCH {opt}")
    return "\n".join(lines)


def render(template: str, *, sbatch: Iterable[str] = (), settings: Mapping[str, Value] | None = None,
           setup: Iterable[str] = ()) -> str:
    """Render template `template` (a file name in scripts/slurm/); every marker it has is filled."""
    blocks = {
        "SBATCH": sbatch_block(sbatch),
        "SETTINGS": settings_block(settings or {}),
        "SETUP": "\n".join(setup),
        "LIB": template_text(JOB_LIB).rstrip("\n"),
    }
    out = []
    for line in template_text(template).splitlines():
        marker = line.strip()[len("# @"):] if line.strip().startswith("# @") else None
        if marker in blocks:
            if blocks[marker]:
                out.append(blocks[marker])
        else:
            out.append(line)
    return "\n".join(out) + "\n"


def write_script(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path
