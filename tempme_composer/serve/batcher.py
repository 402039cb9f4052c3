"""Dynamic micro-batching of text queries: the requests that arrive while the model is busy, or within
``max_wait`` of the first, are encoded in one text-encoder forward and ranked in one pass over the index
(the batching of serving systems such as Clipper, Crankshaw et al., NSDI 2017). The model runs on one worker
thread, so the event loop keeps accepting requests meanwhile. ``max_batch`` 1: one query per forward."""

from __future__ import annotations

import asyncio
import contextlib
from concurrent.futures import Executor
from typing import Any

from tempme_composer.serve.engine import Engine, TextRequest

__all__ = ['MicroBatcher']


class MicroBatcher:
    def __init__(
        self, engine: Engine, executor: Executor, max_batch: int = 64, max_wait_s: float = 0.005
    ) -> None:
        self.engine, self.executor = engine, executor
        self.max_batch, self.max_wait_s = max(1, max_batch), max(0.0, max_wait_s)
        self._queue: asyncio.Queue[tuple[TextRequest, asyncio.Future] | None] = asyncio.Queue()
        self._carry: tuple[TextRequest, asyncio.Future] | None = None
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Finish what is queued, then stop."""
        if self._task is not None:
            self._queue.put_nowait(None)
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(self, request: TextRequest) -> Any:
        """``(index, [QueryResult, ...])`` of one request's texts, searched together on one generation."""
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((request, future))
        return await future

    async def _next(self, timeout: float | None) -> tuple[TextRequest, asyncio.Future] | None:
        if self._carry is not None:
            item, self._carry = self._carry, None
            return item
        if timeout is None:
            return await self._queue.get()
        if timeout <= 0:
            return self._queue.get_nowait()
        return await asyncio.wait_for(self._queue.get(), timeout)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        stopping = False
        while not stopping or self._carry is not None:
            first = await self._next(None)
            if first is None:
                break
            batch, size = [first], len(first[0].texts)
            deadline = loop.time() + self.max_wait_s
            while size < self.max_batch:
                try:
                    item = await self._next(deadline - loop.time())
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                if item is None:
                    stopping = True
                    break
                if size + len(item[0].texts) > self.max_batch:
                    self._carry = item  # opens the next batch
                    break
                batch.append(item)
                size += len(item[0].texts)
            live = [(r, f) for r, f in batch if not f.done()]  # a request that timed out is not searched
            if not live:
                continue
            try:
                index, results = await loop.run_in_executor(
                    self.executor, self.engine.search_texts, [r for r, _ in live]
                )
            except Exception as e:  # handed to each request, which answers it as its error
                for _, f in live:
                    if not f.done():
                        f.set_exception(e)
                continue
            for (_, f), result in zip(live, results, strict=True):
                if not f.done():
                    f.set_result((index, result))
