"""What every stream of a process shares: the model engine, Whisper and its worker pool."""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from models.factory import build_model

from .asr import PassDecoder, ShortPassDecoder, WhisperBatcher, commit_pass_decoder, load_whisper, short_pass_decoder
from .config import AppConfig
from .engine import ModelEngine
from .faces import load_tracker_library
from .metrics import LatencyStats

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    cfg: AppConfig
    engine: ModelEngine
    whisper: Any = None  # faster_whisper.WhisperModel, or None when ASR is off
    asr_executor: Optional[concurrent.futures.Executor] = None
    stats: LatencyStats = field(default_factory=LatencyStats)
    asr_decoder: Optional[ShortPassDecoder] = None  # shared by every stream; None: faster-whisper's stock path
    asr_batcher: Optional[WhisperBatcher] = None
    asr_commit_decoder: Optional[ShortPassDecoder] = None  # asr.commit_model's; None: commits use asr_decoder

    def pass_decoder(self) -> Optional[PassDecoder]:
        """What a new stream's transcriber decodes its passes with (call on the event loop)."""
        if self.asr_batcher is not None:
            return self.asr_batcher.for_stream(asyncio.get_running_loop())
        return self.asr_decoder

    def commit_decoder(self) -> Optional[PassDecoder]:
        """What a new stream's transcriber decodes its commits with (None: its pass decoder)."""
        if self.asr_batcher is not None:
            return self.asr_batcher.for_commits(asyncio.get_running_loop())
        return self.asr_commit_decoder

    async def close(self) -> None:
        await self.engine.close()
        if self.asr_batcher is not None:
            await self.asr_batcher.close()
        if self.asr_executor is not None:
            self.asr_executor.shutdown(wait=False, cancel_futures=True)


def build_runtime_blocking(cfg: AppConfig, need_asr: bool = True, shared: bool = True) -> Runtime:
    """Loads CLIP (+ fusion checkpoint) and Whisper once; raises UserError on missing weights.
    `shared=False`: a private Whisper too (the one-model-per-stream benchmark baseline)."""
    stats = LatencyStats()
    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)  # the process's torch pool: set once, here
    model = build_model(cfg)
    if cfg.faces.enabled:
        load_tracker_library()
    engine = ModelEngine(model, cfg.engine, stats)
    whisper, pool, decoder, batcher, commit = None, None, None, None, None
    if need_asr and cfg.asr.enabled:
        whisper = load_whisper(cfg.asr, shared=shared)
        decoder = short_pass_decoder(whisper, cfg.asr)
        commit = commit_pass_decoder(cfg.asr)  # asr.commit_model (shared even with shared=False)
        workers = cfg.asr.workers
        if decoder is not None and cfg.asr.batch > 1:
            batcher = WhisperBatcher(decoder, cfg.asr, stats, commit)
            workers = max(workers, cfg.asr.batch)  # streams wait for their batch in these threads
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sentistream-asr")
    return Runtime(cfg, engine, whisper, pool, stats, decoder, batcher, commit)


async def build_runtime(cfg: AppConfig, need_asr: bool = True) -> Runtime:
    return await asyncio.to_thread(build_runtime_blocking, cfg, need_asr)
