"""Whisper passes of many streams decoded together (`asr.batch` > 1).

Each stream's transcriber runs in an ASR worker thread and blocks on its pass; `BatchedPassDecoder`
hands the pass to a process-wide `MicroBatcher` on the event loop, which gathers up to
`asr.batch` passes (waiting at most `asr.batch_wait_ms` after the first) and runs them as one
`ShortPassDecoder.transcribe_batch` on a dedicated Whisper thread: one encode, one decode, one alignment.
With `asr.commit_model`, the commit decodes (another model) are batched the same way by a second
`MicroBatcher` on the same thread, so passes and commits never run at once and each batch holds one model.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Callable, Optional

import numpy as np

from ..batching import MicroBatcher
from ..config import AsrConfig
from ..metrics import LatencyStats
from .pass_decoder import Decoded, PassDecoder, ShortPassDecoder

_PASS_TIMEOUT_S = 300.0  # a pass never legitimately waits this long: fail loudly, don't hang a thread

Request = tuple[np.ndarray, Optional[str], Optional[int], Optional[str]]


class WhisperBatcher:
    """The process-wide batcher and its compute thread."""

    def __init__(self, decoder: ShortPassDecoder, cfg: AsrConfig, stats: Optional[LatencyStats] = None,
                 commit_decoder: Optional[ShortPassDecoder] = None) -> None:
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sentistream-whisper")
        self.batcher: MicroBatcher[Request, list[Decoded]] = MicroBatcher(
            "asr_batch", _runner(decoder), self._executor, cfg.batch, cfg.batch_wait_ms, stats)
        self.commit_batcher: Optional[MicroBatcher[Request, list[Decoded]]] = None
        if commit_decoder is not None:
            self.commit_batcher = MicroBatcher("asr_commit_batch", _runner(commit_decoder), self._executor,
                                               cfg.batch, cfg.batch_wait_ms, stats)

    def for_stream(self, loop: asyncio.AbstractEventLoop) -> "BatchedPassDecoder":
        return BatchedPassDecoder(self.batcher, loop)

    def for_commits(self, loop: asyncio.AbstractEventLoop) -> Optional["BatchedPassDecoder"]:
        """A stream's commit decoder (None without a commit model: commits join the passes' batches)."""
        return BatchedPassDecoder(self.commit_batcher, loop) if self.commit_batcher is not None else None

    async def close(self) -> None:
        await self.batcher.close()
        if self.commit_batcher is not None:
            await self.commit_batcher.close()
        self._executor.shutdown(wait=False, cancel_futures=True)


def _runner(decoder: ShortPassDecoder) -> Callable[[list[Request]], list[list[Decoded]]]:
    def run(requests: list[Request]) -> list[list[Decoded]]:
        return decoder.transcribe_batch([r[0] for r in requests], [r[1] for r in requests],
                                        [r[2] for r in requests], [r[3] for r in requests])
    return run


class BatchedPassDecoder(PassDecoder):
    """`transcribe(audio, prompt, beam_size, prefix)` for a transcriber in a worker thread: joins the next batch."""

    def __init__(self, batcher: MicroBatcher[Request, list[Decoded]], loop: asyncio.AbstractEventLoop) -> None:
        self._batcher = batcher
        self._loop = loop

    def transcribe(self, audio: np.ndarray, prompt: Optional[str], beam_size: Optional[int] = None,
                   prefix: Optional[str] = None) -> list[Decoded]:
        future = asyncio.run_coroutine_threadsafe(self._batcher.submit((audio, prompt, beam_size, prefix)), self._loop)
        try:
            return future.result(timeout=_PASS_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise RuntimeError(f"a batched Whisper pass got no result in {_PASS_TIMEOUT_S:.0f} s") from None
