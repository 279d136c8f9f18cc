"""Fuzzing `geo3d serve` (a real checkpoint, a real subprocess, loopback only, bounded and seeded): random and
oversized frames, malformed msgpack, wrong types and shapes in all three client formats, text frames, deep
nesting, and more concurrent connections than serve.limits.max_connections. Every frame is answered (a reply or
an error) or refused (close 1009 / HTTP 503), never left hanging; the server stays up and its RSS stays bounded.
The tallies and RSS are printed (pytest -s) and written to <tmp>/fuzz_report.json."""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections import Counter
from contextlib import ExitStack

import numpy as np
import psutil
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from eval_fixtures import IMAGE, SHARED_RUNS, ServeProcess, trained_runs
from field_clients import field_packb, field_unpackb

pytestmark = [SHARED_RUNS, pytest.mark.slow]  # trains the shared checkpoints, starts `geo3d serve`

SEED, COUNTS = 24, {"random": 80, "truncated": 40, "bitflip": 40, "mutated": 160, "valid": 24, "text": 16,
                    "nested": 4, "oversized": 2}
CONCURRENT, CAP = 80, 64  # connections at once vs the default serve.limits.max_connections
RSS_BOUND_MB = 512        # growth allowed over the warmed-up server (the old server grew to 24 GB)


def valid(rng: np.random.Generator, kind: str) -> dict:
    img = lambda s: rng.integers(0, 256, (s, s, 3), dtype=np.uint8)  # noqa: E731
    state = rng.normal(size=8)
    if kind == "geo3d":
        return {"type": "infer", "request_id": int(rng.integers(1e6)),
                "payload": {"images": np.stack([img(IMAGE), img(IMAGE)]), "instruction": "pick up the black bowl",
                            "state": state.astype(np.float32)}}
    if kind == "starvla":
        return {"examples": [{"image": [img(224), img(224)], "lang": "put the bowl on the plate", "state": state}],
                "unnorm_key": None, "do_sample": False, "use_ddim": True, "num_ddim_steps": 10}
    return {"observation/image": img(224), "observation/wrist_image": img(224), "observation/state": state,
            "prompt": "open the top drawer"}


def junk(rng: np.random.Generator):
    pool = [None, True, -1, 2**63 - 1, 1.5, float("nan"), "", "x" * 5000, "ab " * 330, b"\0" * 10, [], [1, 2, 3], {},
            {"a": {"b": {}}}, np.zeros(0, np.uint8), np.zeros((2, 8, 8, 3), np.uint8),
            np.zeros((2, 1, 4000, 3), np.uint8), np.zeros((2, 56, 56, 3), np.float32),
            np.zeros((3, 56, 56, 3), np.uint8), np.zeros((2, 56, 56, 4), np.uint8), np.float32(1), np.full(8, np.nan),
            np.zeros((9, 224, 224, 3), np.uint8), [np.zeros((56, 56, 3), np.uint8)] * 5,
            {b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4", b"shape": [1000, 1000]},
            {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]},
            {b"__ndarray__": True, b"data": b"", b"dtype": "<f4", b"shape": [-5]},
            {b"__npgeneric__": True, b"data": [1], b"dtype": "<f8"}, [{"image": 1, "lang": 2}] * 40]
    return pool[int(rng.integers(len(pool)))]


def paths(obj, prefix=()):
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from paths(v, (*prefix, k))


def mutate(rng: np.random.Generator, msg: dict) -> dict:
    """Replace, delete or add one value somewhere in a valid message."""
    ps = [p for p in paths(msg) if p]
    path = ps[int(rng.integers(len(ps)))]
    parent = msg
    for k in path[:-1]:
        parent = parent[k]
    op = rng.integers(3)
    if op == 0 or not isinstance(parent, dict):
        parent[path[-1]] = junk(rng)
    elif op == 1:
        del parent[path[-1]]
    else:
        parent[f"extra{int(rng.integers(100))}"] = junk(rng)
    return msg


def frames(rng: np.random.Generator) -> list[tuple[str, bytes | str]]:
    kinds = ("geo3d", "starvla", "openpi")
    out = []
    for _ in range(COUNTS["random"]):
        out.append(("random", rng.bytes(int(rng.integers(0, 4096)))))
    for _ in range(COUNTS["truncated"]):
        raw = field_packb(valid(rng, kinds[int(rng.integers(3))]))
        out.append(("truncated", raw[: int(rng.integers(1, len(raw)))]))
    for _ in range(COUNTS["bitflip"]):
        raw = bytearray(field_packb(valid(rng, kinds[int(rng.integers(3))])))
        for i in rng.integers(0, min(len(raw), 400), 4):  # the headers, not just pixels
            raw[int(i)] ^= 1 << int(rng.integers(8))
        out.append(("bitflip", bytes(raw)))
    for _ in range(COUNTS["mutated"]):
        out.append(("mutated", field_packb(mutate(rng, valid(rng, kinds[int(rng.integers(3))])))))
    for i in range(COUNTS["valid"]):
        out.append(("valid", field_packb(valid(rng, kinds[i % 3]))))
    for _ in range(COUNTS["text"]):
        out.append(("text", "".join(chr(int(c)) for c in rng.integers(32, 0x2FFF, int(rng.integers(1, 200))))))
    for depth in (100, 1000, 5000, 100_000):
        out.append(("nested", b"\x91" * depth + b"\xc0"))
    order = rng.permutation(len(out))
    big = [("oversized", b"\0" * (33 * 2**20)), ("oversized", field_packb({"prompt": "a" * (40 * 2**20)}))]
    return [out[i] for i in order] + big


def outcome(reply) -> str:
    """answered | refused (the request's fault, said so) | UNEXPECTED (a server or policy error: a bug)."""
    if isinstance(reply, str):
        text, channel = reply.split(": ", 1)[-1] if reply.startswith("geo3d serve") else reply, "text frame"
    else:
        msg = field_unpackb(reply)
        if isinstance(msg, dict) and ("actions" in msg or msg.get("ok") is True or msg == {}):
            return "answered"
        if not (isinstance(msg, dict) and msg.get("ok") is False):
            return f"UNEXPECTED {str(msg)[:80]}"
        text, channel = msg["error"]["message"], "map"
    return f"refused ({channel})" if text.startswith("bad request") else f"UNEXPECTED {text[:120]}"


def exchange(url: str, batch: list[tuple[str, bytes | str]], tally: Counter) -> None:
    """One connection, reopened after a close; each frame must get a reply or a close within 120 s."""
    with ExitStack() as stack:
        ws = None
        for cat, frame in batch:
            if ws is None:
                ws = stack.enter_context(connect(url, proxy=None, max_size=None, open_timeout=30))
                ws.recv(timeout=30)  # handshake
            try:
                ws.send(frame)
                tally[(cat, outcome(ws.recv(timeout=120)))] += 1
            except ConnectionClosed as e:
                tally[(cat, f"closed {e.rcvd.code if e.rcvd else 'abnormal'}")] += 1
                ws = None
            except TimeoutError:
                tally[(cat, "NO ANSWER")] += 1
                ws = None


def concurrent(url: str, rng: np.random.Generator, tally: Counter) -> None:
    """CONCURRENT connections at once, each holding its slot until all have tried, then 3 frames each."""
    tried, go = threading.Barrier(CONCURRENT), threading.Event()
    work = [[("concurrent", field_packb(valid(rng, "openpi"))),
             ("concurrent", field_packb(mutate(rng, valid(rng, "starvla")))), ("concurrent", rng.bytes(64))]
            for _ in range(CONCURRENT)]

    def one(i: int) -> None:
        try:
            with connect(url, proxy=None, max_size=None, open_timeout=60) as ws:
                ws.recv(timeout=30)
                tally[("connect", "open")] += 1
                tried.wait(120)
                go.wait(120)
                for cat, frame in work[i]:
                    ws.send(frame)
                    tally[(cat, outcome(ws.recv(timeout=300)))] += 1
        except InvalidStatus as e:
            tally[("connect", f"refused HTTP {e.response.status_code}")] += 1
            tried.wait(120)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(CONCURRENT)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    go.set()
    for t in threads:
        t.join(600)


class RssSampler(threading.Thread):
    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc, self.peak, self.stop = psutil.Process(pid), 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.02)


def test_fuzzed_server_answers_or_refuses_everything_stays_up_and_bounded(tmp_path_factory, tmp_path):
    runs = trained_runs(tmp_path_factory.getbasetemp() / "eval_runs")
    srv = ServeProcess(runs["qformer"])
    rng = np.random.default_rng(SEED)
    try:
        tally: Counter = Counter()
        exchange(srv.url, [("warmup", field_packb(valid(rng, k))) for k in ("geo3d", "starvla", "openpi")], tally)
        assert tally[("warmup", "answered")] == 3, tally
        baseline = psutil.Process(srv.proc.pid).memory_info().rss
        sampler = RssSampler(srv.proc.pid)
        sampler.start()
        start = time.perf_counter()
        exchange(srv.url, frames(rng), tally)
        concurrent(srv.url, rng, tally)
        sampler.stop.set()
        sampler.join()
        seconds = time.perf_counter() - start
        assert srv.proc.poll() is None, "the server died"
        with urllib.request.urlopen(srv.url.replace("ws://", "http://") + "/healthz", timeout=10) as r:
            assert r.status == 200
        exchange(srv.url, [("after", field_packb(valid(rng, "openpi")))], tally)
    finally:
        srv.stop()
    report = {"frames": sum(v for (c, _), v in tally.items() if c != "connect"), "seconds": round(seconds, 1),
              "baseline_rss_mb": round(baseline / 2**20), "peak_rss_mb": round(sampler.peak / 2**20),
              "tally": {f"{c}: {o}": v for (c, o), v in sorted(tally.items())}}
    (tmp_path / "fuzz_report.json").write_text(json.dumps(report, indent=2))
    print("\nfuzz report:", json.dumps(report, indent=2))
    bad = {k: v for k, v in report["tally"].items() if "NO ANSWER" in k or "UNEXPECTED" in k}
    assert not bad, bad
    assert tally[("after", "answered")] == 1 and tally[("valid", "answered")] == COUNTS["valid"]
    assert tally[("oversized", "closed 1009")] == COUNTS["oversized"]
    assert tally[("connect", "open")] == CAP and tally[("connect", "refused HTTP 503")] == CONCURRENT - CAP
    assert (sampler.peak - baseline) / 2**20 < RSS_BOUND_MB, report
