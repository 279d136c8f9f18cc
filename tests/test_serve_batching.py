"""Batching in `geo3d serve`: concurrent queries share one forward (wait window, max batch), each answer goes
back to its own client, one failing query does not fail its neighbours, and a batched forward of a real
checkpoint equals the unbatched one within tolerance (same flow-matching noise)."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import numpy as np
import pytest
import torch

from eval_fixtures import COMPRESSORS, SHARED_RUNS, serve_settings, start_server, trained_runs
from geo3d.evaluation.batching import Batcher, predict_batch
from geo3d.evaluation.client import RemotePolicy
from geo3d.evaluation.observation import fit_views
from geo3d.evaluation.policy_handle import load_local_policy, policy_info
from geo3d.evaluation.server import PolicyServer
from geo3d.evaluation.server_requests import Query
from geo3d.policy.precision import accelerate_precision

pytestmark = SHARED_RUNS


def query(i: int, size: int = 64) -> Query:
    rng = np.random.default_rng(i)
    words = ["pick up the black bowl", "open the top drawer of the cabinet and put the bowl inside", "push the plate",
             "put the cream cheese in the bowl", "turn on the stove"]
    return Query(rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8), words[i % len(words)],
                 rng.normal(size=8).astype(np.float32))


def run_batcher(run, queries_per_client: list[list[Query]], max_size: int, wait_s: float):
    async def main():
        b = Batcher(run, max_size, wait_s)
        b.start()
        try:
            out = await asyncio.gather(*(b.submit(qs) for qs in queries_per_client))
        finally:
            await b.stop()
        return [r for r, _ in out], b.stats()
    return asyncio.run(main())


def test_concurrent_queries_share_forwards_up_to_max_size_and_answers_go_back_to_their_sender():
    seen = []

    def run(qs):
        seen.append(len(qs))
        return [np.full((8, 7), float(q.state[0]), np.float32) for q in qs]

    clients = [[Query(np.zeros((2, 4, 4, 3), np.uint8), "x", np.full(8, i, np.float32))] for i in range(6)]
    results, stats = run_batcher(run, clients, max_size=4, wait_s=0.2)
    assert seen == [4, 2] and stats["forwards"] == 2 and stats["mean_batch"] == 3.0
    assert [float(r[0][0, 0]) for r in results] == [0, 1, 2, 3, 4, 5]


def test_a_failing_query_fails_alone():
    def run(qs):
        if any(q.instruction == "bad" for q in qs):
            raise RuntimeError("cannot do 'bad'")
        return [np.zeros((8, 7), np.float32) for _ in qs]

    good = Query(np.zeros((2, 4, 4, 3), np.uint8), "good", np.zeros(8, np.float32))
    bad = Query(good.images, "bad", good.state)
    results, _ = run_batcher(run, [[good], [bad], [good]], max_size=8, wait_s=0.2)
    assert isinstance(results[1][0], RuntimeError) and "'bad'" in str(results[1][0])
    assert results[0][0].shape == (8, 7) and results[2][0].shape == (8, 7)


@contextlib.contextmanager
def fixed_noise():
    """The head's initial noise, the same for every batch row and every call (entered after loading: the
    encoders draw their seeded weights with torch.randn): batched vs unbatched then differ only by batching."""
    original = torch.randn

    def randn(*size, generator=None, dtype=None, **kw):
        shape = tuple(size[0]) if len(size) == 1 and isinstance(size[0], (tuple, list, torch.Size)) else size
        row = original(shape[1:], generator=torch.Generator().manual_seed(0), dtype=dtype)
        return row.expand(shape).clone()

    torch.randn = randn
    try:
        yield
    finally:
        torch.randn = original


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return trained_runs(tmp_path_factory.getbasetemp() / "eval_runs")


# fp32: batching must not change a number beyond float rounding. bf16 autocast (what `auto` picks on a CPU with
# native bf16, and on GPUs): batched matmuls round differently, within a few bf16 ulps (2**-8 relative) of ~1.
TOLERANCE = {"no": 1e-5, "bf16": 2e-2}


@pytest.mark.slow  # trains two real checkpoints first (shared with the other eval modules)
@pytest.mark.parametrize("compressor", COMPRESSORS)  # qformer: preset geo3d, live geometry; pool: preset fork
def test_batched_forward_equals_unbatched(runs, compressor):
    policy = load_local_policy(runs[compressor], "cpu")
    queries = [Query(fit_views(q.images, policy.image_size), q.instruction, q.state) for q in map(query, range(5))]
    own = accelerate_precision(policy.config.train.mixed_precision, "cpu")  # the checkpoint's own rule here
    for precision in ("no", own):
        policy.config.train.mixed_precision = precision
        with fixed_noise():
            single = np.stack([policy.predict_action(q.images, q.instruction, q.state) for q in queries])
            batched = np.stack(predict_batch(policy, queries))
        tol = TOLERANCE[precision]
        assert np.allclose(batched, single, atol=tol, rtol=tol), (precision, np.abs(batched - single).max())
        if precision == "no":  # teeth: the rows depend on their own inputs far beyond the tolerance
            assert np.abs(single[0] - single[1:]).max() > 100 * tol


@pytest.mark.slow
def test_concurrent_clients_of_a_real_checkpoint_are_batched_and_get_their_own_answers(runs):
    policy = load_local_policy(runs["qformer"], "cpu")
    policy.config.train.mixed_precision = "no"  # fp32: answers must match to float rounding
    srv = PolicyServer(policy, policy_info(policy), serve_settings("serve.port=0", "serve.batch.wait_ms=300"))
    url, stop = start_server(srv)
    queries = [query(i) for i in range(4)]
    try:
        with fixed_noise():
            answers, stats = concurrent_answers(url, queries)
    finally:
        stop()
    assert stats["forwards"] < len(queries) and stats["mean_batch"] > 1, stats
    with fixed_noise():
        for i, q in enumerate(queries):
            alone = policy.predict_action(fit_views(q.images, policy.image_size), q.instruction, q.state)
            assert np.allclose(answers[i], alone, atol=TOLERANCE["no"], rtol=TOLERANCE["no"]), \
                (i, np.abs(answers[i] - alone).max())


def concurrent_answers(url: str, queries: list[Query]) -> tuple[dict[int, np.ndarray], dict]:
    """Each query from its own client thread at once: (answers by query index, the server's batching stats)."""
    clients = [RemotePolicy(url) for _ in queries]
    answers: dict[int, np.ndarray] = {}

    def ask(i: int) -> None:
        answers[i] = clients[i].predict_action(queries[i].images, queries[i].instruction, queries[i].state)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(queries))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    stats = clients[0].health()["batching"]
    for c in clients:
        c.close()
    return answers, stats
