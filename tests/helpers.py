"""The one place tests run `geo3d`: in this process (the fast tier) or as a real subprocess (the slow tier).

`run_geo3d(args, expect=...)` runs a verb in-process through the same `geo3d.cli.command.build_app` the console
script uses (click's test runner captures stdout/stderr and the exit code, env and cwd are applied for the call),
so the fast tier spawns no `geo3d` process. `spawn_geo3d` / `popen_geo3d` start a real one for what only a
process shows (kill -9, signals, concurrent writers, sys.path at start-up); such tests are marked slow.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

from typer.testing import CliRunner

from geo3d.cli.command import VERBS, build_app

REPO = Path(__file__).resolve().parents[1]
# Threads pinned so CPU results are reproducible and two pytest workers do not fight over two cores.
THREAD_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a `geo3d` test subprocess."""
    return {**os.environ, **THREAD_ENV, **extra}


def geo3d_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "geo3d.cli", *map(str, args)]


@dataclass
class Result:
    """What a `geo3d` run left: the same fields as subprocess.CompletedProcess."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _check(result: Result, expect: int | None) -> Result:
    if expect is not None:
        assert result.returncode == expect, (f"geo3d {' '.join(result.args)} exited {result.returncode}, expected "
                                             f"{expect}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n"
                                             f"{result.stderr[-3000:]}")
    return result


@contextlib.contextmanager
def _as_process(argv: list[str], cwd: str | Path | None) -> Iterator[None]:
    """The call sees what a `geo3d` process would: its working directory and sys.argv (resume commands are
    built from it)."""
    old_cwd, old_argv = os.getcwd(), sys.argv
    sys.argv = ["geo3d", *argv]
    if cwd is not None:
        os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        sys.argv = old_argv


def run_geo3d(args: Sequence[str], expect: int | None = 0, env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> Result:
    """`geo3d ARGS` in this process; asserts the exit code when `expect` is not None."""
    argv = [str(a) for a in args]
    verb = argv[0] if argv and argv[0] in {v[0] for v in VERBS} else None
    with _as_process(argv, cwd):
        res = CliRunner().invoke(build_app([verb] if verb else None), argv, env=dict(env or {}), prog_name="geo3d",
                                 catch_exceptions=True)
    stderr = res.stderr
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback
        stderr += "".join(traceback.format_exception(res.exception))
    return _check(Result(argv, res.exit_code, res.stdout, stderr), expect)


def spawn_geo3d(args: Sequence[str], expect: int | None = 0, env: Mapping[str, str] | None = None,
                cwd: str | Path | None = None, timeout: float = 600) -> Result:
    """`geo3d ARGS` as a real subprocess (slow tier), threads pinned."""
    proc = subprocess.run(geo3d_cmd(*args), cwd=cwd or REPO, capture_output=True, text=True, timeout=timeout,
                          env=subprocess_env(**(env or {})))
    return _check(Result([str(a) for a in args], proc.returncode, proc.stdout, proc.stderr), expect)


def popen_geo3d(args: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | Path | None = None,
                **kwargs) -> subprocess.Popen:
    """A running `geo3d ARGS` process (signals, kill -9, concurrency)."""
    kwargs.setdefault("stdout", subprocess.PIPE)
    kwargs.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen(geo3d_cmd(*args), cwd=cwd or REPO, env=subprocess_env(**(env or {})), text=True,
                            **kwargs)
