"""Drawing the overlay: the current estimate (label, score bar, modality weights, last transcript
line) onto a frame, and the `OverlayTracker` that folds the event stream into what to draw."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import cv2
import numpy as np

_FONT = cv2.FONT_HERSHEY_SIMPLEX
# RGB colours (frames are RGB throughout the pipeline).
_RED, _GREEN, _GREY, _WHITE = (230, 60, 50), (60, 200, 90), (170, 170, 170), (255, 255, 255)
_ORANGE, _BLUE, _VIOLET = (255, 165, 0), (80, 160, 255), (200, 120, 255)
_LABEL_COLOURS = {"positive": _GREEN, "negative": _RED, "neutral": _GREY}


@dataclass
class OverlayState:
    label: Optional[str] = None
    score: Optional[float] = None
    probs: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)  # modality -> weight: "image", "text"
    transcript: str = ""
    weights_kind: str = "pretrained"  # "pretrained" | "random"
    faces: list[dict[str, Any]] = field(default_factory=list)  # the estimate's `faces` (id, bbox, label, score)
    blur_faces: bool = False  # faces.blur_in_overlay: blur every face box before drawing it


def _text_size(text: str, scale: float, thick: int) -> tuple[int, int]:
    (w, h), _ = cv2.getTextSize(text, _FONT, scale, thick)
    return w, h


def _put(img: np.ndarray, text: str, x: int, y: int, scale: float, colour: tuple, thick: int) -> None:
    # A dark outline under the text keeps it legible where the panel is thin or the video is bright.
    cv2.putText(img, text, (x, y), _FONT, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), _FONT, scale, colour, thick, cv2.LINE_AA)


def _darken(img: np.ndarray, x0: int, y0: int, x1: int, y1: int, alpha: float = 0.6) -> None:
    roi = img[y0:y1, x0:x1]
    roi[:] = (roi.astype(np.float32) * (1.0 - alpha)).astype(np.uint8)


def _fit_tail(text: str, width: int, scale: float, thick: int) -> str:
    """The end of `text` (the newest words) that fits in `width` px, with "..." if cut."""
    text = " ".join(text.split())
    if _text_size(text, scale, thick)[0] <= width:
        return text
    lo, hi = 0, len(text)
    while lo < hi:  # smallest cut whose tail fits
        mid = (lo + hi) // 2
        if _text_size("..." + text[mid:], scale, thick)[0] <= width:
            hi = mid
        else:
            lo = mid + 1
    return "..." + text[lo:]


def _score_colour(score: float) -> tuple[int, int, int]:
    s = (max(-1.0, min(1.0, score)) + 1.0) / 2.0
    return tuple(int(r + (g - r) * s) for r, g in zip(_RED, _GREEN))  # type: ignore[return-value]


def _face_rect(face: dict[str, Any], w: int, h: int) -> Optional[tuple[int, int, int, int]]:
    try:
        x, y, bw, bh = (float(v) for v in face["bbox"])
    except (KeyError, TypeError, ValueError):
        return None
    x0, y0 = max(0, int(round(x))), max(0, int(round(y)))
    x1, y1 = min(w, int(round(x + bw))), min(h, int(round(y + bh)))
    return (x0, y0, x1, y1) if x1 - x0 >= 2 and y1 - y0 >= 2 else None


def _draw_faces(img: np.ndarray, faces: list[dict[str, Any]], blur: bool, scale: float, thick: int) -> None:
    """A box per face in its label's colour, "#id label +score" above it; blurred first if asked."""
    h, w = img.shape[:2]
    for face in faces:
        rect = _face_rect(face, w, h)
        if rect is None:
            continue
        x0, y0, x1, y1 = rect
        if blur:
            k = max(3, ((x1 - x0) // 3) | 1)  # odd kernel, a third of the face: nothing recognisable
            img[y0:y1, x0:x1] = cv2.GaussianBlur(img[y0:y1, x0:x1], (k, k), 0)
        colour = _LABEL_COLOURS.get(str(face.get("label")), _WHITE)
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), colour, max(1, thick))
        score = face.get("score")
        text = f"#{face.get('id')} {face.get('label', '')} {score:+.2f}" if isinstance(score, (int, float)) else f"#{face.get('id')}"
        _, th = _text_size(text, scale, thick)
        _put(img, text, x0, y0 - 3 if y0 - 3 - th >= 0 else min(h - 2, y1 + th + 2), scale, colour, thick)


def draw_overlay(image_rgb: np.ndarray, state: OverlayState) -> np.ndarray:
    """A copy of `image_rgb` (HxWx3 uint8 RGB) with the estimate drawn on it; the input is untouched."""
    img = np.ascontiguousarray(image_rgb, dtype=np.uint8).copy()
    h, w = img.shape[:2]
    scale = max(0.36, w / 800.0)  # 0.4 at 320 px wide, 0.8 at 640, 1.6 at 1280
    thick = max(1, int(round(scale * 1.6)))
    if state.faces:  # under the panels: the estimate stays readable over a face
        _draw_faces(img, state.faces, state.blur_faces, scale * 0.7, max(1, thick - 1))
    big_scale, big_thick = scale * 1.35, thick + (1 if scale >= 0.6 else 0)
    small = scale * 0.85
    _, th = _text_size("Ag", scale, thick)
    _, big_h = _text_size("Ag", big_scale, big_thick)
    pad = max(3, th // 2)

    if state.label is None or state.score is None:
        head, head_colour, head_scale, head_thick = "waiting for estimate...", _GREY, scale, thick
    else:
        head = f"{state.label.upper()} {state.score:+.2f}"
        head_colour, head_scale, head_thick = _LABEL_COLOURS.get(state.label, _WHITE), big_scale, big_thick
    probs = ""
    if state.probs and h >= 200:  # a third text row only where there is room for it
        probs = "  ".join(f"{k[:3]} {state.probs.get(k, 0.0):.2f}" for k in ("negative", "neutral", "positive"))
    tag = "random weights" if state.weights_kind == "random" else ""
    panel_w = min(w, max(int(w * 0.5), 150, _text_size(head, head_scale, head_thick)[0] + 3 * pad,
                         _text_size(probs, small, thick)[0] + 3 * pad))
    tag_w = _text_size(tag, small, thick)[0] if tag else 0
    tag_in_panel = bool(tag) and w - panel_w < tag_w + 3 * pad  # no room at the top-right corner

    # Rows of the top-left panel, top to bottom: label+score, score bar, [probs], weights, [tag].
    bar_h = max(4, th)
    rows = [big_h if head_scale == big_scale else th, bar_h] + ([th] if probs else []) + [th] + \
        ([th] if tag_in_panel else [])
    top_h = sum(rows) + pad * (len(rows) + 1)
    _darken(img, 0, 0, panel_w, min(h, top_h))
    x, y = pad + 1, pad + rows[0]
    _put(img, head, x, y, head_scale, head_colour, head_thick)

    # Score bar: -1 (red) ... 0 ... +1 (green), white marker at the score.
    bx0, bx1 = x, panel_w - pad - 1
    by0 = y + pad + pad // 2
    by1 = by0 + bar_h
    if by1 <= h and bx1 - bx0 > 4:
        grad = np.array([_score_colour(v) for v in np.linspace(-1.0, 1.0, bx1 - bx0)], dtype=np.float32)
        img[by0:by1, bx0:bx1] = (0.35 * img[by0:by1, bx0:bx1] + 0.65 * grad[None, :, :]).astype(np.uint8)
        mid = (bx0 + bx1) // 2
        cv2.line(img, (mid, by0), (mid, by1 - 1), (30, 30, 30), 1)
        if state.score is not None:
            mx = int(round(bx0 + (max(-1.0, min(1.0, state.score)) + 1.0) / 2.0 * (bx1 - bx0 - 1)))
            m = max(1, thick)
            cv2.rectangle(img, (mx - m - 1, by0 - 2), (mx + m + 1, by1 + 1), (0, 0, 0), -1)
            cv2.rectangle(img, (mx - m, by0 - 1), (mx + m, by1), _WHITE, -1)
    y = by1 + pad

    if probs:
        y += th
        _put(img, probs, x, y, small, _WHITE, thick)
        y += pad

    # Modality weights: how much of the estimate rests on the picture vs the words.
    y += th
    half = (panel_w - 2 * pad) // 2
    for i, (key, name, colour) in enumerate((("image", "img", _BLUE), ("text", "txt", _VIOLET))):
        # "img [####    ] 0.65": name, gauge, value.
        wx, wx1 = x + i * half, x + (i + 1) * half - 2 * pad
        weight = state.weights.get(key)
        value = f"{weight:.2f}" if weight is not None else "--"
        _put(img, name, wx, y, scale, _WHITE, thick)
        vx = wx1 - _text_size("0.00", scale, thick)[0]
        _put(img, value, vx, y, scale, _WHITE, thick)
        gx0, gx1 = wx + _text_size(name, scale, thick)[0] + pad, vx - pad
        if gx1 - gx0 >= 6 and y <= h:
            cv2.rectangle(img, (gx0, y - th), (gx1, y), (110, 110, 110), 1)
            if weight:
                fill = gx0 + int(round(max(0.0, min(1.0, weight)) * (gx1 - gx0)))
                cv2.rectangle(img, (gx0, y - th), (fill, y), colour, -1)

    if tag:
        # Untrained weights must never be mistaken for a real estimate.
        if tag_in_panel:
            tx, ty = x, y + pad + th
        else:
            tx, ty = w - tag_w - 2 * pad, pad + th
            cv2.rectangle(img, (tx - pad, 0), (w - 1, ty + pad), (90, 45, 0), -1)
        _put(img, tag, tx, ty, small, _ORANGE, thick)

    # Bottom strip: the newest words of the transcript.
    if state.transcript.strip():
        text = _fit_tail(state.transcript, w - 2 * pad, scale, thick)
        _darken(img, 0, max(0, h - th - 2 * pad), w, h)
        _put(img, text, pad, h - pad - 1, scale, _WHITE, thick)
    return img


class OverlayTracker:
    """Folds the event stream into the `OverlayState` to draw at a given media time."""

    def __init__(self, max_chars: int = 60, blur_faces: bool = False) -> None:
        self.max_chars = max_chars
        self.blur_faces = blur_faces
        self.sentiment: Optional[dict[str, Any]] = None
        self._finals: list[str] = []
        self._final_end = float("-inf")
        self._partial: Optional[dict[str, Any]] = None

    def feed(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "sentiment":
            self.sentiment = event
        elif kind == "transcript" and str(event.get("text", "")).strip():
            if event.get("final"):
                self._finals.append(str(event["text"]).strip())
                self._final_end = max(self._final_end, float(event.get("t_end", event.get("t", 0.0))))
                self._partial = None
            else:
                self._partial = event

    def transcript(self) -> str:
        parts = list(self._finals[-8:])
        # A partial is the not-yet-committed tail: shown only if it is newer than the committed text.
        p = self._partial
        if p is not None and float(p.get("t_start", p.get("t", 0.0))) >= self._final_end - 0.05:
            parts.append(str(p["text"]).strip())
        text = " ".join(parts)
        if len(text) > self.max_chars:
            text = text[-self.max_chars:]
            text = text.split(" ", 1)[1] if " " in text[: self.max_chars // 3] else text
        return text

    def state(self) -> OverlayState:
        ev = self.sentiment or {}
        mods = ev.get("modalities") or {}
        weights = {k: float(m["weight"]) for k, m in mods.items() if isinstance(m, dict) and m.get("weight") is not None}
        return OverlayState(
            label=ev.get("label"), score=ev.get("score"), probs=dict(ev.get("probs") or {}), weights=weights,
            transcript=self.transcript(), weights_kind=str(ev.get("weights", "pretrained")),
            faces=list(ev.get("faces") or []), blur_faces=self.blur_faces)
