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
    "CLIP weights are random (vision.pretrained=random): the CLIP heads carry no meaning and get weight 0 "
    "(experts.clip_heads=auto); the estimates rest on the experts (lexicon, sentence, expression)"
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
    """Writes one JSON object per line and flushes it, so a crash never leaves half a line.

    A file is created (truncated) on the first event, not before: a run that fails before it has
    anything to say (bad weights, a bad source) leaves no empty file behind and an earlier file as it was.
    """

    def __init__(self, path: Optional[str | Path] = None):
        self._own = path is not None and str(path) != "-"
        self.path = path
        self._fh: Optional[IO[str]] = None if self._own else sys.stdout
        self._lock = threading.Lock()
        self._closed = False

    def _open(self) -> IO[str]:
        try:
            self._fh = open(self.path, "w", encoding="utf-8")  # type: ignore[arg-type]
        except OSError as exc:
            raise UserError(f"cannot write events to {self.path}: {exc.strerror}") from None
        return self._fh

    def emit(self, event: dict[str, Any]) -> None:
        line = encode_event(event)
        with self._lock:
            if self._closed:
                raise ValueError(f"event sink {self.path} is closed")
            fh = self._fh if self._fh is not None else self._open()
            fh.write(line + "\n")
            fh.flush()

    def close(self) -> None:
        with self._lock:
            self._closed = self._own
            if self._own and self._fh is not None:
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


class Event:
    """One event as a typed object (the Python API's view of a JSONL line).

    The underlying dict is the event exactly as `run` writes it: `to_dict()` returns a copy of it
    and `to_json()` its JSONL line, byte for byte. Subclasses add typed read-only accessors."""

    __slots__ = ("_data",)

    def __init__(self, data: dict[str, Any]):
        self._data = data

    @staticmethod
    def from_dict(data: dict[str, Any]) -> "Event":
        return EVENT_CLASSES.get(str(data.get("type")), Event)(data)

    @property
    def type(self) -> str:
        return self._data["type"]

    @property
    def stream(self) -> str:
        return self._data["stream"]

    @property
    def t(self) -> float:
        return self._data["t"]

    def get(self, key: str, default: Any = None) -> Any:
        return self._data.get(key, default)

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def to_dict(self) -> dict[str, Any]:
        return json.loads(encode_event(self._data))  # a deep copy, JSON types only

    def to_json(self) -> str:
        return encode_event(self._data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Event) and other._data == self._data

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_json()})"


class SentimentEvent(Event):
    __slots__ = ()

    @property
    def label(self) -> str:
        return self._data["label"]

    @property
    def score(self) -> float:
        return self._data["score"]

    @property
    def probs(self) -> dict[str, float]:
        return dict(self._data["probs"])

    @property
    def modalities(self) -> dict[str, Any]:
        return self._data["modalities"]

    @property
    def weights(self) -> str:
        return self._data["weights"]

    @property
    def latency_ms(self) -> float:
        return self._data["latency_ms"]


class TranscriptEvent(Event):
    __slots__ = ()

    @property
    def text(self) -> str:
        return self._data["text"]

    @property
    def final(self) -> bool:
        return bool(self._data["final"])

    @property
    def t_start(self) -> float:
        return self._data["t_start"]

    @property
    def t_end(self) -> float:
        return self._data["t_end"]


class MessageEvent(Event):
    """`warning` and `error` events."""

    __slots__ = ()

    @property
    def message(self) -> str:
        return self._data["message"]


class SummaryEvent(Event):
    __slots__ = ()

    @property
    def estimates(self) -> int:
        return self._data["estimates"]

    @property
    def transcripts(self) -> int:
        return self._data["transcripts"]

    @property
    def media_seconds(self) -> float:
        return self._data["media_seconds"]

    @property
    def latency(self) -> dict[str, Any]:
        return self._data["latency"]


EVENT_CLASSES: dict[str, type[Event]] = {
    "sentiment": SentimentEvent, "transcript": TranscriptEvent, "summary": SummaryEvent,
    "warning": MessageEvent, "error": MessageEvent,
}
