"""Dynamic batching: images from concurrent requests are run as one batch.

Images wait in a bounded queue. A worker task takes up to ``max_batch_size`` of them,
waiting at most ``timeout`` for a batch to fill when the model is idle, runs the batch in a
thread (never on the event loop) and hands each request its rows. Whatever queues while a
batch runs forms the next batch at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor

import numpy as np


class QueueFull(Exception):
    """The queue cannot take the images; the caller should retry later."""


class BatcherClosed(Exception):
    """The batcher was retired (its version was swapped out) before taking the images."""


BatchHook = Callable[[int, float], None]  # batch size, seconds


class Batcher:
    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        executor: Executor,
        max_batch_size: int = 16,
        timeout: float = 0.005,
        max_queue: int = 256,
        on_batch: BatchHook | None = None,
        max_inflight: int = 1,
    ) -> None:
        self._predict = predict
        self._executor = executor
        self.max_batch_size = max_batch_size
        self.timeout = timeout
        self.max_queue = max_queue
        self._on_batch = on_batch
        # Batches handed to the runtime at once: with 2, the next batch is stacked and
        # submitted while one runs, so the runtime never waits for Python.
        self._slots = asyncio.Semaphore(max_inflight)
        self._running: set[asyncio.Task[None]] = set()
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._expected = 0  # images announced by requests that have not queued them yet

    @property
    def depth(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> bool:
        return self._closed

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    @contextlib.contextmanager
    def expecting(self, count: int) -> Iterator[None]:
        """Announce ``count`` images that will be queued soon (while they are decoded)."""
        self._expected += count
        try:
            yield
        finally:
            self._expected -= count
            self._wakeup.set()

    def enqueue(self, images: list[np.ndarray]) -> list[asyncio.Future[np.ndarray]]:
        """Queue ``images`` (no await: callers that resolved this batcher cannot race a
        swap). Returns one future per image, resolving to its probabilities."""
        if self._closed:
            raise BatcherClosed
        if len(self._queue) + len(images) > self.max_queue:
            raise QueueFull
        loop = asyncio.get_running_loop()
        futures = []
        for image in images:
            future: asyncio.Future[np.ndarray] = loop.create_future()
            self._queue.append((image, future))
            futures.append(future)
        self._wakeup.set()
        return futures

    async def close(self) -> None:
        """Take no more images; finish the queued ones, then stop."""
        self._closed = True
        self._wakeup.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _next_batch(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        while not self._queue:
            if self._closed:
                return []
            self._wakeup.clear()
            await self._wakeup.wait()
        if len(self._queue) < self.max_batch_size and self.timeout > 0 and not self._closed:
            # Wait for a fuller batch only while images are known to be on their way
            # (announced by requests still decoding): a lone request runs at once.
            deadline = time.perf_counter() + self.timeout
            while len(self._queue) < self.max_batch_size and self._expected > 0:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
        n = min(self.max_batch_size, len(self._queue))
        return [self._queue.popleft() for _ in range(n)]

    async def _run(self) -> None:
        while True:
            await self._slots.acquire()
            batch = await self._next_batch()
            if not batch:
                self._slots.release()
                if self._running:
                    await asyncio.gather(*self._running)
                return
            task = asyncio.get_running_loop().create_task(self._execute(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _execute(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        try:
            live = [(img, fut) for img, fut in batch if not fut.done()]  # drop cancelled
            if not live:
                return
            started = time.perf_counter()
            try:
                x = np.stack([img for img, _ in live])
                loop = asyncio.get_running_loop()
                probs = await loop.run_in_executor(self._executor, self._predict, x)
            except Exception as exc:
                for _, fut in live:
                    if not fut.done():
                        fut.set_exception(exc)
                return
            if self._on_batch is not None:
                self._on_batch(len(live), time.perf_counter() - started)
            for row, (_, fut) in zip(probs, live, strict=True):
                if not fut.done():
                    fut.set_result(row)
        finally:
            self._slots.release()
