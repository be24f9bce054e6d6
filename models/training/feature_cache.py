"""Frozen-backbone features for training: computed once per (backbone, data, sampling), cached on disk.

The backbone is frozen, so every epoch would recompute identical CLIP features; caching them makes
training a matter of seconds on a CPU. One safetensors file per data set holds, padded over samples:
image features (N, Tv, d) + frame ages + mask, text token states (N, Tw, d) + mask + EOT index,
the zero-shot prompt embeddings / logit scale / logit bias the fusion heads start from (so training and
evaluation never need the backbone again once the cache exists), and the experts' readings (experts.text
on the sample's text, experts.face on the largest face of each frame) with their evidence mask.

Video samples are framed like the live pipeline frames a stream: frames kept by the same
`FrameSampler` at `sampler.fps`, then at most `train.frames_per_video` evenly spaced ones; a
frame's age is its distance to the clip's end (the live window's end at that moment).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import av
import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from tqdm import tqdm

from ..backbone import Backbone, create_backbone, resolve_device, resolve_dtype, weights_fingerprint
from ..config import ModelConfig
from ..errors import UserError, one_line
from ..experts import EXPERTS, EXPRESSION_MARGIN, create_face_expert, create_text_experts
from ..face_detector import HaarFaceDetector, crop_box
from ..factory import ZeroShot, prompt_embeddings
from ..fusion import FusionInputs
from ..media import DamagedPackets, decode_packets, media_t0
from ..prompts import LABELS, label_index
from ..sampling import FrameSampler
from .data import Dataset, Sample

log = logging.getLogger(__name__)

FORMAT = "sentistream-features/3"  # 2: resize with the tower's own interpolation (bicubic for CLIP); 3: experts' readings
_IMAGE_BATCH = 64  # frames per CLIP image forward
_TEXT_BATCH = 64


@dataclass
class FeatureSet:
    """Cached features of a data set, in the data set's sample order, plus labels and splits."""

    key: str
    ids: list[str]
    labels: torch.Tensor  # (N,) class index
    splits: list[str]
    image: torch.Tensor  # (N, Tv, d) fp16
    image_mask: torch.Tensor  # (N, Tv) bool
    image_age: torch.Tensor  # (N, Tv) seconds before the clip end
    text: torch.Tensor  # (N, Tw, d) fp16
    text_mask: torch.Tensor  # (N, Tw) bool (all False for an empty text)
    text_pool: torch.Tensor  # (N,) the tower's pooling position
    prompt_embeddings: torch.Tensor  # (3, d)
    logit_scale: float
    logit_bias: float = 0.0
    experts: Optional[torch.Tensor] = None  # (N, len(EXPERTS), 3) the experts' readings
    experts_mask: Optional[torch.Tensor] = None  # (N, len(EXPERTS)) bool: the expert had evidence

    @property
    def embed_dim(self) -> int:
        return int(self.image.shape[-1])

    @property
    def zero_shot(self) -> ZeroShot:
        """What `models.factory.build_fusion` starts a fusion model from, as cached with the features."""
        return ZeroShot(self.embed_dim, self.prompt_embeddings, self.logit_scale, self.logit_bias)

    def indices(self, split: str) -> torch.Tensor:
        return torch.tensor([i for i, s in enumerate(self.splits) if s == split], dtype=torch.long)

    def inputs(self, idx: torch.Tensor, device: torch.device) -> FusionInputs:
        return FusionInputs(
            image=self.image[idx].to(device, torch.float32),
            image_mask=self.image_mask[idx].to(device),
            image_age=self.image_age[idx].to(device),
            text=self.text[idx].to(device, torch.float32),
            text_mask=self.text_mask[idx].to(device),
            text_pool=self.text_pool[idx].to(device),
            experts=None if self.experts is None else self.experts[idx].to(device),
            experts_mask=None if self.experts_mask is None else self.experts_mask[idx].to(device),
        )


# ------------------------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """$SENTISTREAM_CACHE/features, else $XDG_CACHE_HOME (or ~/.cache)/sentistream/features."""
    if os.environ.get("SENTISTREAM_CACHE"):
        return Path(os.environ["SENTISTREAM_CACHE"]).expanduser() / "features"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "sentistream" / "features"


def feature_key(cfg: ModelConfig, dataset: Dataset, dtype: torch.dtype) -> str:
    """Hash of what the features depend on: backbone (name, weights and the size / mtime of local
    weight files, arch, precision), sampling
    parameters, and every sample's id, text and media file (path, size, mtime). Labels and splits
    are left out on purpose: relabelling must not force a re-extraction."""
    h = hashlib.sha256()
    spec = {
        "format": FORMAT,
        "vision": {"model": cfg.vision.model, "pretrained": cfg.vision.pretrained, "arch": cfg.vision.arch, "dtype": str(dtype),
                   "files": weights_fingerprint(cfg.vision)},
        "sampling": {"fps": cfg.sampler.fps, "frames_per_video": cfg.train.frames_per_video, "max_text_tokens": cfg.window.max_text_tokens},
        "experts": {"text": cfg.experts.text, "sentence": cfg.experts.sentence, "face": cfg.experts.face},
    }
    h.update(json.dumps(spec, sort_keys=True).encode())
    for s in dataset.samples:
        media = s.media
        stat = media.stat() if media is not None else None
        row = [s.id, s.text, str(media), stat.st_size if stat else 0, stat.st_mtime_ns if stat else 0, "video" if s.video_path else "image"]
        h.update(json.dumps(row).encode())
    return h.hexdigest()[:24]


def _load_cache(path: Path, dataset: Dataset, key: str) -> Optional[FeatureSet]:
    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
        tensors = load_file(str(path))
        ids = json.loads(meta.get("ids", "[]"))
    except (SafetensorError, OSError, ValueError) as exc:
        log.warning("feature cache %s unreadable (%s): recomputing", path, exc)
        return None
    if meta.get("format") != FORMAT or ids != [s.id for s in dataset.samples]:
        log.warning("feature cache %s does not match the data: recomputing", path)
        return None
    return FeatureSet(
        key=key,
        ids=ids,
        labels=torch.tensor([label_index(s.label) for s in dataset.samples], dtype=torch.long),
        splits=[s.split for s in dataset.samples],
        image=tensors["image"], image_mask=tensors["image_mask"], image_age=tensors["image_age"],
        text=tensors["text"], text_mask=tensors["text_mask"], text_pool=tensors["text_pool"],
        prompt_embeddings=tensors["prompt_embeddings"], logit_scale=float(tensors["logit_scale"].item()),
        logit_bias=float(tensors["logit_bias"].item()) if "logit_bias" in tensors else 0.0,
        experts=tensors["experts"], experts_mask=tensors["experts_mask"],
    )


# ------------------------------------------------------------------------------------------ frames
def read_image(sample: Sample) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    path = sample.image_path
    try:
        # Above Image.MAX_IMAGE_PIXELS PIL only warns (twice that: raises): both refuse the image here,
        # before gigabytes are decoded from a few compressed kilobytes.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return np.array(im.convert("RGB"))[None]  # a writable copy (torch warns on read-only arrays)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(f"{sample.source}: image {path} is too large to decode (over {Image.MAX_IMAGE_PIXELS} "
                        "pixels: a decompression bomb?); resize it or drop the sample") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{sample.source}: cannot read image {path} ({one_line(exc, 120)})") from None


def read_video(sample: Sample, fps: float, max_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """(frames (n, H, W, 3) uint8, ages (n,) s): the live sampler's frames, then <= max_frames evenly spaced."""
    path = sample.video_path
    sampler = FrameSampler(fps)
    frames: list[np.ndarray] = []
    times: list[float] = []
    end = 0.0
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise UserError(f"{sample.source}: {path} has no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            t0 = media_t0(container) or 0.0
            damaged = DamagedPackets()
            for _, frame in decode_packets(container, stream, damaged=damaged):
                t = max(0.0, (frame.time if frame.time is not None else end) - t0)
                end = max(end, t)
                if not sampler.keep(t):
                    continue
                frames.append(frame.to_ndarray(format="rgb24"))
                times.append(t)
                if len(frames) >= 4 * max_frames:  # long clip: thin out evenly to bound memory
                    frames, times = frames[::2], times[::2]
                    fps /= 2  # and sample the rest at the thinned rate, so the spacing stays even
                    sampler = FrameSampler(fps)
            if damaged.first is not None:  # a training sample is all or nothing
                raise damaged.first
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UserError(f"{sample.source}: cannot decode video {path} ({one_line(exc, 120)})") from None
    if not frames:
        raise UserError(f"{sample.source}: video {path} has no decodable frames")
    pick = np.unique(np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int))
    return np.stack([frames[i] for i in pick]), np.array([end - times[i] for i in pick], dtype=np.float32)


def _sample_frames(sample: Sample, cfg: ModelConfig) -> tuple[np.ndarray, np.ndarray]:
    if sample.video_path is not None:
        return read_video(sample, cfg.sampler.fps, cfg.train.frames_per_video)
    if sample.image_path is not None:
        return read_image(sample), np.zeros(1, dtype=np.float32)
    return np.zeros((0, 1, 1, 3), dtype=np.uint8), np.zeros(0, dtype=np.float32)


# ----------------------------------------------------------------------------------------- extract
def _encode_images(backbone: Backbone, dataset: Dataset, cfg: ModelConfig, progress: bool) -> dict[str, torch.Tensor]:
    n, tv, d = len(dataset.samples), cfg.train.frames_per_video, backbone.embed_dim
    image = torch.zeros(n, tv, d, dtype=torch.float16)
    mask = torch.zeros(n, tv, dtype=torch.bool)
    age = torch.zeros(n, tv, dtype=torch.float32)
    pending: list[tuple[int, torch.Tensor]] = []  # (sample index, preprocessed frames)

    def flush() -> None:
        if not pending:
            return
        with torch.inference_mode():
            emb = backbone.encode_pixels(torch.cat([x for _, x in pending])).cpu()
        row = 0
        for i, x in pending:
            image[i, : len(x)] = emb[row : row + len(x)].to(torch.float16)
            row += len(x)
        pending.clear()

    for i, sample in enumerate(tqdm(dataset.samples, desc="CLIP image features", unit="sample", disable=not progress)):
        frames, ages = _sample_frames(sample, cfg)
        if len(frames) == 0:
            continue
        # The live pipeline's own preprocessing (resize + centre crop on tensors), per sample since sizes differ.
        with torch.inference_mode():
            pending.append((i, backbone.preprocess(torch.from_numpy(np.ascontiguousarray(frames)))))
        mask[i, : len(frames)] = True
        age[i, : len(frames)] = torch.from_numpy(ages)
        if sum(len(x) for _, x in pending) >= _IMAGE_BATCH:
            flush()
    flush()
    return {"image": image, "image_mask": mask, "image_age": age}


def _expert_readings(cfg: ModelConfig, dataset: Dataset, progress: bool) -> dict[str, torch.Tensor]:
    """The experts' readings of every sample, as the live pipeline's: the text expert on the sample's
    text (n = words), the face expert on the largest face of each sampled frame (n = frames with a face)."""
    device = str(resolve_device(cfg.vision.device))
    text_experts = create_text_experts(cfg.experts.text, cfg.experts.sentence, device)
    face_expert = create_face_expert(cfg.experts.face, device)
    n = len(dataset.samples)
    probs = torch.full((n, len(EXPERTS), len(LABELS)), 1.0 / len(LABELS))
    mask = torch.zeros(n, len(EXPERTS), dtype=torch.bool)
    rows = [i for i, s in enumerate(dataset.samples) if s.text.strip()]
    for head, expert in text_experts.items():
        for start in range(0, len(rows), _TEXT_BATCH):
            chunk = rows[start : start + _TEXT_BATCH]
            probs[chunk, EXPERTS.index(head)] = torch.from_numpy(expert.predict([dataset.samples[i].text for i in chunk])).float()
            mask[chunk, EXPERTS.index(head)] = True
    if face_expert is not None:
        detector = HaarFaceDetector(min_size_px=40, max_side=800)
        j = EXPERTS.index("expression")
        for i, sample in enumerate(tqdm(dataset.samples, desc="face expressions", unit="sample", disable=not progress)):
            crops = []
            for frame in _sample_frames(sample, cfg)[0]:
                boxes = detector.detect(frame)
                if len(boxes):
                    x0, y0, x1, y1 = crop_box(tuple(boxes[0]), EXPRESSION_MARGIN, frame.shape[1], frame.shape[0])
                    crops.append(frame[y0:y1, x0:x1])
            if crops:
                probs[i, j] = torch.from_numpy(face_expert.sentiment(crops).mean(0))
                mask[i, j] = True
    return {"experts": probs, "experts_mask": mask}


def _encode_texts(backbone: Backbone, dataset: Dataset, cfg: ModelConfig, progress: bool) -> dict[str, torch.Tensor]:
    texts = [s.text for s in dataset.samples]
    tokens = backbone.tokenize(texts, cfg.window.max_text_tokens)
    layout_mask, pool = backbone.tokenizer.layout(tokens)
    # Trim padding beyond the last position any row uses: smaller cache, faster attention.
    tw = int(torch.where(layout_mask, torch.arange(tokens.shape[1]), torch.zeros_like(tokens)).max()) + 1
    states = torch.zeros(len(texts), tw, backbone.embed_dim, dtype=torch.float16)
    mask = torch.zeros(len(texts), tw, dtype=torch.bool)
    for start in tqdm(range(0, len(texts), _TEXT_BATCH), desc="CLIP text features", unit="batch", disable=not progress):
        out = backbone.encode_text_tokens(tokens[start : start + _TEXT_BATCH])
        states[start : start + len(out.states)] = out.states[:, :tw].cpu().to(torch.float16)
        mask[start : start + len(out.states)] = out.mask[:, :tw].cpu()
    # An empty text is a missing modality: masked out entirely, as the live pipeline does.
    mask &= torch.tensor([bool(t.strip()) for t in texts]).unsqueeze(1)
    return {"text": states, "text_mask": mask, "text_pool": pool.to(torch.int64)}


def load_features(cfg: ModelConfig, dataset: Dataset, *, backbone: Optional[Backbone] = None, progress: bool = True) -> FeatureSet:
    """Features of every sample: from the cache when it has them, else computed with the backbone
    (created only on a cache miss, so cached runs never load CLIP weights) and cached."""
    device = resolve_device(cfg.vision.device)
    key = feature_key(cfg, dataset, resolve_dtype(cfg.vision.precision, device))
    path = cache_root() / f"{key}.safetensors"
    if path.is_file():
        cached = _load_cache(path, dataset, key)
        if cached is not None:
            log.info("features from cache %s", path)
            return cached
    backbone = backbone or create_backbone(cfg.vision)
    tensors = {**_encode_images(backbone, dataset, cfg, progress), **_encode_texts(backbone, dataset, cfg, progress),
               **_expert_readings(cfg, dataset, progress)}
    tensors["prompt_embeddings"] = prompt_embeddings(backbone).float().cpu()
    tensors["logit_scale"] = torch.tensor([backbone.logit_scale], dtype=torch.float32)
    tensors["logit_bias"] = torch.tensor([backbone.logit_bias or 0.0], dtype=torch.float32)
    meta = {"format": FORMAT, "ids": json.dumps([s.id for s in dataset.samples]), "data": str(dataset.path)}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".part")
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)
        tmp.replace(path)  # atomic: an interrupted run never leaves a half-written cache behind
        log.info("features cached in %s", path)
    except OSError as exc:
        log.warning("could not write feature cache %s (%s); continuing without it", path, exc)
    return FeatureSet(
        key=key,
        ids=[s.id for s in dataset.samples],
        labels=torch.tensor([label_index(s.label) for s in dataset.samples], dtype=torch.long),
        splits=[s.split for s in dataset.samples],
        prompt_embeddings=tensors.pop("prompt_embeddings"),
        logit_scale=float(tensors.pop("logit_scale").item()),
        logit_bias=float(tensors.pop("logit_bias").item()),
        **tensors,
    )
