"""Events (JSON Lines): every event has `type`, `stream`, `t` (media seconds).

One constructor (`make_event`), one encoder (`encode_event`: JSONL, the data channel), the sinks,
and the one wording of the warnings every entry point gives about its input (`input_warnings`)."""
from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import IO, Any, Callable, Optional, Protocol

from models.errors import UserError

EventListener = Callable[[dict[str, Any]], None]


RANDOM_WEIGHTS_WARNING = (
    "CLIP weights are random (vision.pretrained=random): estimates carry no meaning; "
    "use this for latency work and tests only"
)


def make_event(kind: str, stream: str, t: float, **fields: Any) -> dict[str, Any]:
    return {"type": kind, "stream": stream, "t": round(float(t), 3), **fields}


def encode_event(event: dict[str, Any]) -> str:
    """One event as one line of compact JSON (UTF-8 kept as is)."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"))


MULTILINGUAL_TEXT_TOWER = "--set vision.model=xlm-roberta-base-ViT-B-32 --set vision.pretrained=laion5b_s13b_b90k"


def text_language_warning(language: Optional[str], vision_model: str) -> Optional[str]:
    """One line when transcripts may be in a language the CLIP text tower was not trained on
    (ViT-B-32 and the other stock towers are English-only; the xlm-roberta ones read ~100 languages)."""
    if language == "en" or any(k in vision_model.lower() for k in ("xlm-roberta", "mt5", "multilingual")):
        return None
    said = f"asr.language={language}" if language else "asr.language=auto (speech other than English)"
    return (f"{said}: the {vision_model} text tower is English-trained and misreads other languages; "
            f"for a multilingual text tower use {MULTILINGUAL_TEXT_TOWER}")


def input_warnings(description: str, *, weights: str, has_video: bool, has_audio: bool, asr_enabled: bool,
                   video_track: str = "video track", audio_track: str = "audio track",
                   language: Optional[str] = "en", vision_model: str = "") -> list[str]:
    """What a user must know about an input before its estimates: random weights, a missing modality,
    a transcript language the text tower cannot read."""
    out = [RANDOM_WEIGHTS_WARNING] if weights == "random" else []
    note = text_language_warning(language, vision_model) if has_audio and asr_enabled else None
    if note:
        out.append(note)
    if not has_audio:
        out.append(f"{description} has no {audio_track}: visual-only estimates (text weight 0)")
    elif not asr_enabled:
        out.append("speech recognition is off (asr.enabled is false): visual-only estimates (text weight 0)")
    if not has_video:
        out.append(f"{description} has no {video_track}: text-only estimates (image weight 0)")
    return out


class EventSink(Protocol):
    def emit(self, event: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class JsonlSink:
    """Writes one JSON object per line and flushes it, so a crash never leaves half a line."""

    def __init__(self, path: Optional[str | Path] = None):
        self._own = path is not None and str(path) != "-"
        try:
            self._fh: IO[str] = open(path, "w", encoding="utf-8") if self._own else sys.stdout  # type: ignore[arg-type]
        except OSError as exc:
            raise UserError(f"cannot write events to {path}: {exc.strerror}") from None
        self._lock = threading.Lock()

    def emit(self, event: dict[str, Any]) -> None:
        line = encode_event(event)
        with self._lock:
            self._fh.write(line + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self._own:
            self._fh.close()


class FanoutSink:
    """Forwards events to several sinks and callbacks (JSONL file, overlay state, data channel...)."""

    def __init__(self, *sinks: EventSink, listeners: tuple[EventListener, ...] = ()):
        self.sinks = list(sinks)
        self.listeners = list(listeners)
        self.events: list[dict[str, Any]] = []
        self.keep = False  # keep a copy (the file overlay pass needs the timeline)

    def emit(self, event: dict[str, Any]) -> None:
        if self.keep:
            self.events.append(event)
        for sink in self.sinks:
            sink.emit(event)
        for listener in self.listeners:
            listener(event)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()
