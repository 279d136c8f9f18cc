"""Many clients, one model: concurrent queries are gathered into one batched forward.

`Batcher` (the server side): the first waiting query opens a batch, which takes every query that arrives within
`serve.batch.wait_ms` (and whatever queued while the previous forward ran), up to `serve.batch.max_size`; the
forward runs off the event loop, one at a time. If a batched forward raises, each query is retried alone, so
one bad query cannot fail its neighbours.

`predict_batch` (the model side): one `Policy.predict_action_batch` call (geo3d.policy.pretrained: the same
processor, geometry encoder and precision context as `predict_action`) for the batch. Prompts of different
lengths are left-padded with their attention mask, as in training batches (tests/test_serve_batching.py: equal
to unbatched within tolerance).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any, Callable

import numpy as np
from omegaconf import OmegaConf

from geo3d.core.errors import Geo3dError
from geo3d.data.lerobot_layout import STATE_DIM
from geo3d.evaluation.policy_handle import check_action_chunk
from geo3d.evaluation.server_requests import Needs, Query


def is_batchable(policy: Any) -> bool:
    """A checkpoint loaded in-process (geo3d.policy.pretrained.Policy) batches; any other policy object is
    called once per query."""
    return hasattr(policy, "predict_action_batch")


def predict_batch(policy: Any, queries: list[Query]) -> list[np.ndarray]:
    """Unnormalized float32 action chunks [H,7], one per query; images already at the policy's size."""
    if not is_batchable(policy):
        return [check_action_chunk(policy.predict_action(q.images, q.instruction, q.state)) for q in queries]
    out = policy.predict_action_batch(np.stack([q.images for q in queries]), [q.instruction for q in queries],
                                      np.stack([q.state for q in queries]))
    return [check_action_chunk(a) for a in out]


def token_counter(tokenizer: Any) -> Callable[[str], int]:
    """Tokens of an instruction with the checkpoint's own tokenizer (no special tokens, no template)."""
    return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])


def needs_of(policy: Any) -> Needs:
    """What the policy needs from a request: views, state (and whether its head reads it), the tokenizer."""
    cfg = getattr(policy, "config", None)
    uses_state, preset = True, None
    if cfg is not None:
        uses_state = bool(OmegaConf.select(cfg, "model.action_head.use_state", default=True))
        preset = OmegaConf.select(cfg, "preset", default=None)
    processor = getattr(policy, "processor", None)
    count = token_counter(processor.vlm_inputs.hf.tokenizer) if processor is not None else None
    return Needs(num_views=getattr(policy, "num_views", None), state_dim=int(getattr(policy, "state_dim", None)
                 or STATE_DIM), uses_state=uses_state, preset=preset, count_tokens=count)


class Batcher:
    """Queues queries from every connection and answers them in batches (see module doc)."""

    def __init__(self, run: Callable[[list[Query]], list[np.ndarray]], max_size: int, wait_s: float) -> None:
        if max_size < 1 or wait_s < 0:
            raise Geo3dError("serve.batch.max_size must be >= 1 and serve.batch.wait_ms >= 0")
        self.run, self.max_size, self.wait_s = run, max_size, wait_s
        self.sizes: Counter[int] = Counter()  # batch size -> number of forwards
        self._queue: asyncio.Queue[tuple[Query, asyncio.Future]] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def submit(self, queries: list[Query]) -> tuple[list[Any], float]:
        """(one chunk or exception per query, milliseconds until all were answered)."""
        assert self._queue is not None, "Batcher.start() first"
        start, loop = time.perf_counter(), asyncio.get_running_loop()
        futures = [loop.create_future() for _ in queries]
        for q, f in zip(queries, futures):
            self._queue.put_nowait((q, f))
        results = await asyncio.gather(*futures, return_exceptions=True)
        return list(results), (time.perf_counter() - start) * 1000

    def stats(self) -> dict[str, Any]:
        n = sum(self.sizes.values())
        return {"forwards": n, "batched_queries": sum(k * v for k, v in self.sizes.items()),
                "mean_batch": round(sum(k * v for k, v in self.sizes.items()) / n, 3) if n else None,
                "batch_sizes": {str(k): v for k, v in sorted(self.sizes.items())}}

    async def _gather(self) -> list[tuple[Query, asyncio.Future]]:
        assert self._queue is not None
        items = [await self._queue.get()]
        deadline = asyncio.get_running_loop().time() + self.wait_s
        while len(items) < self.max_size:
            if not self._queue.empty():
                items.append(self._queue.get_nowait())
                continue
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        return [(q, f) for q, f in items if not f.cancelled()]  # a client that went away needs no answer

    async def _loop(self) -> None:
        while True:
            items = await self._gather()
            if not items:
                continue
            self.sizes[len(items)] += 1
            try:
                results = await asyncio.to_thread(self._run_each, [q for q, _ in items])
            except Exception as e:  # noqa: BLE001 -- the loop must outlive any failure, or every client hangs
                results = [e] * len(items)
            for (_, fut), res in zip(items, results):
                if fut.done():
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    def _run_each(self, queries: list[Query]) -> list[Any]:
        try:
            out = self.run(queries)
            if len(out) != len(queries):
                raise Geo3dError(f"batched forward returned {len(out)} chunks for {len(queries)} queries")
            return out
        except Exception as batch_error:  # noqa: BLE001 -- retried one by one, each keeps its own error
            if len(queries) == 1:
                return [batch_error]
        results: list[Any] = []
        for q in queries:
            try:
                results.append(self.run([q])[0])
            except Exception as e:  # noqa: BLE001
                results.append(e)
        return results
