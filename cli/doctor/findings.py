"""One finding per check: status, what was seen, the fix. The exit code follows from the findings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable

from geo3d.core.errors import Geo3dError

OK, FAIL, WARN, NA = "ok", "FAIL", "warn", "not available"


@dataclass
class Finding:
    check: str
    status: str  # OK | FAIL (the run needs it and it is broken/missing) | WARN | NA (cannot apply, not needed)
    detail: str
    fix: str = ""

    def line(self) -> str:
        fix = f" -> fix: {self.fix}" if self.fix and self.status in (FAIL, WARN) else ""
        return f"[{self.status:>13}] {self.check}: {self.detail}{fix}"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def missing(check: str, needed: bool, detail: str, fix: str) -> Finding:
    """A thing that is absent: a failure when the run needs it, else merely not available here."""
    return Finding(check, FAIL if needed else NA, detail, fix)


def guarded(check: str, fn: Callable[[], Iterable[Finding]]) -> list[Finding]:
    """Run one check; an unexpected error becomes a FAIL finding instead of a traceback that hides the rest."""
    try:
        return list(fn())
    except Geo3dError as e:
        return [Finding(check, FAIL, str(e).splitlines()[0], "see the message")]
    except Exception as e:  # noqa: BLE001 - a doctor reports, it does not crash
        return [Finding(check, FAIL, f"check crashed: {type(e).__name__}: {e}", "report this as a geo3d bug")]


def exit_code(findings: Iterable[Finding]) -> int:
    return 1 if any(f.status == FAIL for f in findings) else 0
