"""Data sets for `sentistream train` / `evaluate`: one list of `Sample`s from any supported layout.

Layouts (detected from what is on disk):
- a JSON Lines manifest (`*.jsonl`, or a directory holding exactly one), paths relative to it:
  {"id", "image": path | "video": path, "text", "label": negative|neutral|positive | "score": float,
   "split": train|valid|test}; without any "split" the samples get a seeded 8:1:1 split;
- MVSA-Single / MVSA-Multiple as distributed: `labelResultAll.txt` + `data/<id>.jpg|txt`;
- CH-SIMS (v1/v2): `label.csv` + `Raw/<video_id>/<clip_id>.mp4`.

Every problem is a `UserError` naming the file and line, raised while loading, i.e. before any
feature extraction or training starts.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from ..errors import UserError
from ..prompts import LABELS, score_to_label

log = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "valid", "test")
MANIFEST_SUFFIXES = (".jsonl", ".json")
MVSA_LABEL_FILE = "labelResultAll.txt"
CHSIMS_LABEL_FILE = "label.csv"
_VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


@dataclass(frozen=True)
class Sample:
    id: str
    text: str
    label: str  # one of LABELS
    split: str  # one of SPLITS
    image_path: Optional[Path] = None
    video_path: Optional[Path] = None
    source: str = ""  # "file:line" the sample came from, for error messages later on

    @property
    def media(self) -> Optional[Path]:
        return self.video_path or self.image_path


@dataclass(frozen=True)
class Dataset:
    path: Path
    layout: str  # manifest | mvsa-single | mvsa-multiple | ch-sims
    samples: tuple[Sample, ...]

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    def counts(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for name in SPLITS:
            c = Counter(s.label for s in self.split(name))
            out[name] = {label: c.get(label, 0) for label in LABELS}
        return out

    def require_splits(self, names: Sequence[str]) -> None:
        """Empty splits are user errors: training needs train+valid, evaluation needs test."""
        for name in names:
            if not self.split(name):
                raise UserError(f"{self.path}: split '{name}' has no samples ({self.layout} layout, "
                                f"{len(self.samples)} samples in all); every one of {', '.join(names)} needs some")


# ----------------------------------------------------------------------------------------- helpers
def seeded_split(n: int, seed: int) -> list[str]:
    """8:1:1 train/valid/test over n items in a seeded random order (valid/test get >= 1 when n >= 3)."""
    order = np.random.default_rng(seed).permutation(n)
    n_valid = max(1, round(0.1 * n)) if n >= 3 else 0
    n_test = max(1, round(0.1 * n)) if n >= 3 else 0
    n_train = n - n_valid - n_test
    names = ["train"] * n_train + ["valid"] * n_valid + ["test"] * n_test
    out = [""] * n
    for rank, idx in enumerate(order):
        out[int(idx)] = names[rank]
    return out


def _read_text_file(path: Path) -> str:
    # MVSA tweets come in mixed encodings: UTF-8 when possible, else Latin-1 (never fails).
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return " ".join(text.split())


def _media_path(base: Path, value: Any, where: str, key: str) -> Path:
    if not isinstance(value, str) or not value.strip():
        raise UserError(f"{where}: '{key}' must be a non-empty path string")
    path = (base / value).resolve() if not Path(value).is_absolute() else Path(value)
    if not path.is_file():
        raise UserError(f"{where}: {key} file not found: {path}")
    return path


def _label_from(record: dict[str, Any], where: str) -> str:
    if "label" in record and record["label"] is not None:
        label = record["label"]
        if not isinstance(label, str) or label.strip().lower() not in LABELS:
            raise UserError(f"{where}: unknown label {label!r} (allowed: {', '.join(LABELS)}, or a 'score' in [-1, 1])")
        return label.strip().lower()
    if "score" in record and record["score"] is not None:
        return _score_label(record["score"], where)
    raise UserError(f"{where}: needs 'label' ({', '.join(LABELS)}) or 'score' (float in [-1, 1])")


def _score_label(value: Any, where: str) -> str:
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{where}: score {value!r} is not a number in [-1, 1]") from None
    if isinstance(value, bool) or not math.isfinite(score) or not -1.0 <= score <= 1.0:
        raise UserError(f"{where}: score {value!r} is not a number in [-1, 1]")
    return score_to_label(score)


# ---------------------------------------------------------------------------------------- manifest
def load_manifest(path: Path, seed: int) -> Dataset:
    base = path.parent
    rows: list[tuple[dict[str, Any], str]] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text (a JSON Lines manifest is expected)") from None
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise UserError(f"{where}: each line must be a JSON object with id, image|video, text, label|score, split")
        rows.append((record, where))
    if not rows:
        raise UserError(f"{path}: the manifest has no samples")
    with_split = [w for r, w in rows if r.get("split") is not None]
    if with_split and len(with_split) != len(rows):
        missing = next(w for r, w in rows if r.get("split") is None)
        raise UserError(f"{missing}: no 'split' while other lines have one; give every line a split or none at all")
    splits = [r.get("split") for r, _ in rows] if with_split else seeded_split(len(rows), seed)
    samples = [_manifest_sample(r, w, base, split) for (r, w), split in zip(rows, splits)]
    _check_unique(samples)
    return Dataset(path, "manifest", tuple(samples))


def _manifest_sample(record: dict[str, Any], where: str, base: Path, split: Any) -> Sample:
    sid = record.get("id")
    if not isinstance(sid, (str, int)) or isinstance(sid, bool) or str(sid).strip() == "":
        raise UserError(f"{where}: needs an 'id' (string or integer)")
    if split not in SPLITS:
        raise UserError(f"{where}: unknown split {split!r} (allowed: {', '.join(SPLITS)})")
    text = record.get("text", "")
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise UserError(f"{where}: 'text' must be a string")
    if record.get("image") is not None and record.get("video") is not None:
        raise UserError(f"{where}: give 'image' or 'video', not both")
    image = _media_path(base, record["image"], where, "image") if record.get("image") is not None else None
    video = _media_path(base, record["video"], where, "video") if record.get("video") is not None else None
    if image is None and video is None and not text.strip():
        raise UserError(f"{where}: sample has no image, no video and no text")
    label = _label_from(record, where)
    return Sample(str(sid), text, label, split, image, video, where)


def _check_unique(samples: Sequence[Sample]) -> None:
    seen: dict[str, str] = {}
    for s in samples:
        if s.id in seen:
            raise UserError(f"{s.source}: duplicate id '{s.id}' (first at {seen[s.id]})")
        seen[s.id] = s.source


# -------------------------------------------------------------------------------------------- MVSA
def _mvsa_pair(text_label: str, image_label: str) -> Optional[str]:
    """The usual MVSA cleaning: agree -> that label; neutral + polar -> polar; pos vs neg -> drop."""
    if text_label == image_label:
        return text_label
    if "neutral" in (text_label, image_label):
        return image_label if text_label == "neutral" else text_label
    return None


def _majority(labels: Sequence[str]) -> Optional[str]:
    label, count = Counter(labels).most_common(1)[0]
    return label if count * 2 > len(labels) else None


def _mvsa_labels(cells: Sequence[str], where: str) -> list[tuple[str, str]]:
    pairs = []
    for cell in cells:
        parts = [p.strip().lower() for p in cell.split(",")]
        if len(parts) != 2:
            raise UserError(f"{where}: expected 'text_label,image_label', got {cell!r}")
        for p in parts:
            if p not in LABELS:
                raise UserError(f"{where}: unknown label {p!r} (allowed: {', '.join(LABELS)})")
        pairs.append((parts[0], parts[1]))
    return pairs


def load_mvsa(root: Path, seed: int) -> Dataset:
    label_file = root / MVSA_LABEL_FILE
    data_dir = root / "data"
    if not data_dir.is_dir():
        raise UserError(f"{root}: MVSA layout needs a data/ directory next to {MVSA_LABEL_FILE}")
    lines = label_file.read_text(encoding="utf-8", errors="replace").splitlines()
    kept: list[tuple[str, str, Path, str, str]] = []  # id, label, image, text, where
    annotators: Optional[int] = None
    dropped = 0
    for lineno, line in enumerate(lines, 1):
        cells = line.strip().split("\t") if line.strip() else []
        if not cells or (lineno == 1 and not cells[0].strip().isdigit()):
            continue  # blank line or the "ID  text,image" header
        where = f"{label_file}:{lineno}"
        if len(cells) < 2:
            raise UserError(f"{where}: expected 'ID<TAB>text_label,image_label' (one pair per annotator)")
        annotators = annotators or len(cells) - 1
        if len(cells) - 1 != annotators:
            raise UserError(f"{where}: {len(cells) - 1} annotations, earlier lines have {annotators}")
        pairs = _mvsa_labels(cells[1:], where)
        if len(pairs) == 1:
            label = _mvsa_pair(*pairs[0])
        else:  # MVSA-Multiple: per-modality majority over annotators, then the pair rule
            t, i = _majority([p[0] for p in pairs]), _majority([p[1] for p in pairs])
            label = _mvsa_pair(t, i) if t and i else None
        if label is None:
            dropped += 1
            continue
        sid = cells[0].strip()
        image = data_dir / f"{sid}.jpg"
        text_path = data_dir / f"{sid}.txt"
        for p in (image, text_path):
            if not p.is_file():
                raise UserError(f"{where}: file not found: {p}")
        kept.append((sid, label, image, _read_text_file(text_path), where))
    if not kept:
        raise UserError(f"{label_file}: no usable samples (all lines were headers or dropped as conflicting)")
    layout = "mvsa-single" if annotators == 1 else "mvsa-multiple"
    log.info("%s: %d samples kept, %d dropped (conflicting labels)", root, len(kept), dropped)
    splits = seeded_split(len(kept), seed)
    samples = [Sample(sid, text, label, split, image, None, where) for (sid, label, image, text, where), split in zip(kept, splits)]
    _check_unique(samples)
    return Dataset(root, layout, tuple(samples))


# ----------------------------------------------------------------------------------------- CH-SIMS
def _chsims_video(raw: Path, video_id: str, clip_id: str) -> Optional[Path]:
    # label.csv clip ids are "0001" in the release, but re-saved CSVs often lose the zero padding.
    names = [clip_id] + ([f"{int(clip_id):04d}"] if clip_id.isdigit() else [])
    for name in names:
        for suffix in _VIDEO_SUFFIXES:
            p = raw / video_id / f"{name}{suffix}"
            if p.is_file():
                return p
    return None


def _utf8_text(path: Path) -> str:
    """The file as text; non-UTF-8 bytes are a UserError naming the line they are on."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the file as UTF-8") from None


def load_chsims(root: Path, seed: int) -> Dataset:
    label_file = root / CHSIMS_LABEL_FILE
    raw = root / "Raw"
    reader = csv.DictReader(io.StringIO(_utf8_text(label_file), newline=""))
    try:
        return _chsims_rows(root, raw, label_file, reader)
    except csv.Error as exc:  # e.g. "field larger than field limit (131072)", NUL bytes
        raise UserError(f"{label_file}:{reader.reader.line_num}: unreadable CSV ({exc})") from None


def _chsims_rows(root: Path, raw: Path, label_file: Path, reader: "csv.DictReader[str]") -> Dataset:
    need = {"video_id", "clip_id", "text", "label", "mode"}
    missing = need - set(reader.fieldnames or [])
    if missing:
        raise UserError(f"{label_file}:1: CH-SIMS header lacks column(s) {', '.join(sorted(missing))}")
    samples = []
    for row in reader:
        where = f"{label_file}:{reader.line_num}"
        video_id, clip_id = (row["video_id"] or "").strip(), (row["clip_id"] or "").strip()
        if not video_id or not clip_id:
            raise UserError(f"{where}: empty video_id or clip_id")
        split = (row["mode"] or "").strip().lower()
        split = {"val": "valid", "dev": "valid"}.get(split, split)
        if split not in SPLITS:
            raise UserError(f"{where}: unknown mode {row['mode']!r} (allowed: train, valid, test)")
        label = _score_label(row["label"], where)
        video = _chsims_video(raw, video_id, clip_id)
        if video is None:
            raise UserError(f"{where}: video not found: {raw / video_id / clip_id}.mp4")
        samples.append(Sample(f"{video_id}/{clip_id}", (row["text"] or "").strip(), label, split, None, video, where))
    if not samples:
        raise UserError(f"{label_file}: no samples")
    _check_unique(samples)
    return Dataset(root, "ch-sims", tuple(samples))


# ------------------------------------------------------------------------------------------ detect
def _layout(path: Path) -> tuple[Callable[[Path, int], Dataset], Path]:
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return load_manifest, path
        if path.name == MVSA_LABEL_FILE:
            return load_mvsa, path.parent
        if path.name == CHSIMS_LABEL_FILE:
            return load_chsims, path.parent
    elif path.is_dir():
        if (path / MVSA_LABEL_FILE).is_file():
            return load_mvsa, path
        if (path / CHSIMS_LABEL_FILE).is_file() and (path / "Raw").is_dir():
            return load_chsims, path
        manifests = sorted(p for p in path.iterdir() if p.suffix.lower() == ".jsonl")
        if len(manifests) == 1:
            return load_manifest, manifests[0]
    else:
        raise UserError(f"data not found: {path}")
    raise UserError(
        f"{path}: layout not recognised; expected a JSON Lines manifest (.jsonl), an MVSA directory "
        f"({MVSA_LABEL_FILE} + data/) or a CH-SIMS directory ({CHSIMS_LABEL_FILE} + Raw/)"
    )


def load_dataset(path: str | Path, seed: int = 0, require: Sequence[str] = ()) -> Dataset:
    """Detects the layout, loads and validates every sample; `require` names splits that must be non-empty."""
    loader, target = _layout(Path(path).expanduser())
    dataset = loader(target, seed)
    dataset.require_splits(require)
    return dataset
