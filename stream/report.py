"""A visual report of one analysed recording: a self-contained HTML page (PNG figures embedded as
base64, inline CSS, no external assets) built from its events (JSON Lines).

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display):
the sentiment timeline (score line over label bands, per-modality weights, per-face scores when
the events carry `faces`) with the final transcript on the same time axis, and latency plots
(the estimates' own `latency_ms` as a histogram, the summary's per-stage percentiles).

The events are read in one pass into bounded aggregates (`Timeline`), whatever the file's size:
the plotted series are evenly decimated to at most `TIMELINE_POINTS` points (`Decimated`), the
latency histogram is drawn from a fixed-size uniform sample (`Reservoir`), and the transcript
rows wait in a temporary file, not in memory. Every line is checked against the fields the report
reads (`EventReader`): a wrong type or a non-finite number is one line naming the line and field."""
from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import random
import tempfile
from pathlib import Path
from typing import IO, Annotated, Any, Iterable, Iterator, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, TypeAdapter, ValidationError

from models.errors import UserError

LABEL_COLOURS = {"negative": "#d62728", "neutral": "#9e9e9e", "positive": "#2ca02c"}
MODALITY_COLOURS = {"image": "#1f77b4", "text": "#ff7f0e"}

TIMELINE_POINTS = 4000  # points kept per plotted series (estimates, each face, transcript bars)
TRANSCRIPT_LABELS = 45  # transcript segments written on the timeline (all of them go in the table)
LATENCY_SAMPLE = 20_000  # estimate latencies kept for the histogram (a uniform sample beyond)
MAX_FACES = 16  # face ids drawn: those with the most estimates (a new id replaces the one with the fewest)
MAX_LABELS = 16  # distinct sentiment labels counted by name; more are counted as "other"
MAX_MESSAGES = 50  # warnings and errors listed; more are counted
MAX_LINE_BYTES = 1 << 20  # an event line longer than this is not one sentistream wrote
SPOOL_BYTES = 1 << 20  # transcript rows beyond this go to disk while the file is read
MAX_SECONDS = 1e9  # media times and latencies beyond this (~31 years) are not from a recording


# ------------------------------------------------------------------------------ the fields the report reads
Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]  # a JSON number (not a string, bool or NaN)
Seconds = Annotated[float, Strict(), Field(allow_inf_nan=False, ge=0, le=MAX_SECONDS)]


class _Fields(BaseModel):
    model_config = ConfigDict(extra="ignore")


class Modality(_Fields):
    weight: Optional[Finite] = None


class Modalities(_Fields):
    image: Optional[Modality] = None
    text: Optional[Modality] = None


class Face(_Fields):
    id: Any = None
    score: Optional[Finite] = None


class _Event(_Fields):
    type: str
    t: Seconds
    stream: Any = None


class SentimentFields(_Event):
    type: Literal["sentiment"]
    label: Optional[str] = None
    score: Optional[Finite] = None
    weights: Any = None
    latency_ms: Optional[Annotated[float, Strict(), Field(allow_inf_nan=False, ge=0, le=MAX_SECONDS * 1000)]] = None
    modalities: Optional[Modalities] = None
    faces: Optional[list[Face]] = None


class TranscriptFields(_Event):
    type: Literal["transcript"]
    text: Optional[str] = None
    final: Optional[bool] = None
    t_start: Optional[Seconds] = None
    t_end: Optional[Seconds] = None


class Stage(_Fields):
    count: Optional[Annotated[int, Strict(), Field(ge=0)]] = None
    p50_ms: Optional[Annotated[float, Strict(), Field(allow_inf_nan=False, ge=0)]] = None
    p95_ms: Optional[Annotated[float, Strict(), Field(allow_inf_nan=False, ge=0)]] = None
    p99_ms: Optional[Annotated[float, Strict(), Field(allow_inf_nan=False, ge=0)]] = None


class SummaryFields(_Event):
    model_config = ConfigDict(extra="allow")  # the counters the summary table shows, as they are
    type: Literal["summary"]
    media_seconds: Optional[Seconds] = None
    latency: Optional[dict[str, Stage]] = None


class MessageFields(_Event):
    type: Literal["warning", "error"]
    message: Any = ""


class OtherFields(_Event):
    pass


AnyEvent = Union[SentimentFields, TranscriptFields, SummaryFields, MessageFields, OtherFields]
_TAGS = {"sentiment": "sentiment", "transcript": "transcript", "summary": "summary", "warning": "message", "error": "message"}


def _tag(value: Any) -> Optional[str]:
    if not isinstance(value, dict) or "type" not in value or "t" not in value:
        return None
    kind = value["type"]
    return _TAGS.get(kind, "other") if isinstance(kind, str) else "other"


EVENT = TypeAdapter(Annotated[Union[
    Annotated[SentimentFields, Tag("sentiment")], Annotated[TranscriptFields, Tag("transcript")],
    Annotated[SummaryFields, Tag("summary")], Annotated[MessageFields, Tag("message")], Annotated[OtherFields, Tag("other")],
], Discriminator(_tag)])


class BadEvent(ValueError):
    """A line or dict that is not an event the report can read; the message says why (no line number)."""


NOT_AN_EVENT = " is not a sentistream event (no \"type\"/\"t\")"


def _explain(exc: ValidationError) -> str:
    err = exc.errors(include_url=False)[0]
    if err["type"] == "json_invalid":
        return " is not JSON: expected the JSON Lines `sentistream run --output` writes"
    loc = [str(p) for p in err["loc"]]
    if err["type"] == "union_tag_not_found" or (err["type"] == "missing" and loc[1:] in (["t"], ["type"])):
        return NOT_AN_EVENT
    kind, field = loc[0], ".".join(loc[1:]) or "event"
    got = err.get("input")
    shown = json.dumps(got)[:40] if isinstance(got, (str, int, float, bool, type(None))) else type(got).__name__
    kind = {"message": "warning/error", "other": "event"}.get(kind, kind)
    msg = err["msg"]
    msg = msg[len("Input "):] if msg.startswith("Input should") else msg[0].lower() + msg[1:]
    return f": {kind} field \"{field}\" {msg} (got {shown}); expected the events `sentistream run --output` writes"


def check_event(event: Any) -> AnyEvent:
    """An event dict as the report reads it; BadEvent when a field has the wrong type or is not finite."""
    try:
        return EVENT.validate_python(event)
    except ValidationError as exc:
        raise BadEvent(_explain(exc)) from None


class EventReader:
    """The events of a JSONL file, one line at a time, each checked (`check_event`); a bad line is a
    UserError naming the file, the line and what is wrong."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def check(self) -> None:
        """UserError unless the file is there."""
        if not self.path.is_file():
            raise UserError(f"events file not found: {self.path} (write one with: sentistream run --source SRC "
                            f"--output {self.path.name})")

    def lines(self) -> Iterator[tuple[int, str]]:
        """(line number, text) of every non-blank line."""
        p = self.path
        self.check()
        try:
            fh = p.open("rb")
        except OSError as exc:
            raise UserError(f"cannot read {p}: {exc.strerror}") from None
        with fh:
            n = 0
            while raw := fh.readline(MAX_LINE_BYTES + 1):
                n += 1
                if len(raw) > MAX_LINE_BYTES:
                    raise UserError(f"{p} line {n} is longer than {MAX_LINE_BYTES >> 20} MiB: not an event `sentistream run` writes")
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise UserError(f"{p} is not a text file (line {n} is not UTF-8): expected the JSON Lines "
                                    "`sentistream run --output` writes") from None
                if line.strip():
                    yield n, line

    def parse(self, n: int, line: str) -> AnyEvent:
        try:
            return EVENT.validate_json(line)
        except ValidationError as exc:
            raise UserError(f"{self.path} line {n}{_explain(exc)}") from None

    def __iter__(self) -> Iterator[AnyEvent]:
        for n, line in self.lines():
            yield self.parse(n, line)


def load_events(path: str | Path) -> list[dict[str, Any]]:
    """Every event of a JSONL file as the dict it is, all in memory (the report streams instead:
    write_report(EventReader(path), ...)); UserError (one line) for a missing file, a line that is
    not an event, or a file without sentiment or transcript events."""
    reader = EventReader(path)
    events = []
    for n, line in reader.lines():
        reader.parse(n, line)
        events.append(json.loads(line))
    if not any(e["type"] in ("sentiment", "transcript") for e in events):
        raise UserError(f"{path} holds no sentiment or transcript events: nothing to report")
    return events


# ------------------------------------------------------------------------------ bounded aggregates
class Decimated:
    """An evenly spaced subsample of a sequence, at most `cap` items: every `stride`-th item is kept
    and the stride doubles (keeping every other kept item) whenever more than `cap` are held. The
    last item added is kept aside, so a series always reaches its end."""

    def __init__(self, cap: int) -> None:
        if cap < 2:
            raise ValueError("cap must be at least 2")
        self.cap = cap
        self.stride = 1
        self.seen = 0
        self.kept: list[Any] = []
        self.last: Any = None

    def add(self, item: Any) -> None:
        if self.seen % self.stride == 0:
            self.kept.append(item)
            if len(self.kept) > self.cap:
                self.kept = self.kept[::2]
                self.stride *= 2
        self.seen += 1
        self.last = item

    def items(self) -> list[Any]:
        if self.seen and (self.seen - 1) % self.stride:
            return self.kept + [self.last]
        return list(self.kept)

    def __len__(self) -> int:
        return self.seen


class Reservoir:
    """A uniform random sample of at most `cap` of the values added (Algorithm R, seeded: the same
    file gives the same sample); all of them while there are no more than `cap`."""

    def __init__(self, cap: int, seed: int = 0) -> None:
        self.cap = cap
        self.values: list[float] = []
        self.seen = 0
        self._rng = random.Random(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.values) < self.cap:
            self.values.append(value)
        else:
            j = self._rng.randrange(self.seen)
            if j < self.cap:
                self.values[j] = value


class Timeline:
    """What the report needs from the events, gathered in one pass with bounded state (the
    transcript rows wait in a temporary file). Use as a context manager, or `close()` it."""

    def __init__(self, points: int = TIMELINE_POINTS) -> None:
        self.points = points
        self.sentiments = Decimated(points)  # (t, score, label, image weight, text weight)
        self.estimates = 0
        self.labels: dict[str, int] = {}
        self.hop = math.inf  # the smallest step between consecutive estimates
        self._last_t: Optional[float] = None
        self._faces: dict[str, Decimated] = {}
        self.faces_not_drawn = 0
        self.latencies = Reservoir(LATENCY_SAMPLE)
        self.segments = Decimated(points)  # final transcript: (index, start, end)
        self.segment_labels = Decimated(TRANSCRIPT_LABELS)  # (index, start, text up to 60 characters)
        self.finals = 0
        self.transcripts = 0
        self._rows: IO[str] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="w+", encoding="utf-8")
        self.messages: list[tuple[str, str]] = []
        self.messages_not_shown = 0
        self.summary: Optional[dict[str, Any]] = None
        self.stream: Optional[str] = None
        self.weights: Any = None
        self._end = 0.0

    @classmethod
    def of(cls, events: Iterable[Any], points: int = TIMELINE_POINTS) -> "Timeline":
        """A Timeline of checked events or plain event dicts (checked here; BadEvent names the item)."""
        tl = cls(points)
        try:
            for i, event in enumerate(events):
                if not isinstance(event, BaseModel):
                    try:
                        event = check_event(event)
                    except BadEvent as exc:
                        raise BadEvent(f"event {i + 1}{exc}") from None
                tl.add(event)
        except BaseException:
            tl.close()
            raise
        return tl

    # ------------------------------------------------------------------ one event
    def add(self, e: AnyEvent) -> None:
        if self.stream is None:
            self.stream = str(e.stream if e.stream is not None else "")[:200]
        if isinstance(e, SentimentFields):
            self._sentiment(e)
        elif isinstance(e, TranscriptFields):
            self.transcripts += 1
            if e.final:
                self._final(e)
        elif isinstance(e, SummaryFields):
            self.summary = {**(e.model_extra or {}), "media_seconds": e.media_seconds, "latency": e.latency}
            self._end = max(self._end, e.media_seconds or 0.0)
        elif isinstance(e, MessageFields):
            if len(self.messages) < MAX_MESSAGES:
                self.messages.append((e.type, str(e.message)[:2000]))
            else:
                self.messages_not_shown += 1

    def _sentiment(self, e: SentimentFields) -> None:
        t = e.t
        if self.estimates == 0:
            self.weights = e.weights
        self.estimates += 1
        label = e.label if e.label is not None else "?"
        if label not in self.labels and len(self.labels) >= MAX_LABELS:
            label = "other"
        self.labels[label] = self.labels.get(label, 0) + 1
        if self._last_t is not None and t > self._last_t:
            self.hop = min(self.hop, t - self._last_t)
        self._last_t = t
        m = e.modalities
        weights = [getattr(getattr(m, name, None), "weight", None) or 0.0 for name in MODALITY_COLOURS]
        self.sentiments.add((t, e.score if e.score is not None else 0.0, e.label, *weights))
        if e.latency_ms is not None:
            self.latencies.add(e.latency_ms)
        for face in e.faces or ():
            if face.score is None:
                continue
            key = str(face.id if face.id is not None else "?")[:40]
            series = self._faces.get(key)
            if series is None:
                if len(self._faces) >= MAX_FACES:  # the face with the fewest estimates so far makes room
                    fewest = min(self._faces, key=lambda k: len(self._faces[k]))
                    self.faces_not_drawn += len(self._faces.pop(fewest))
                series = self._faces[key] = Decimated(self.points)
            series.add((t, face.score))
        self._end = max(self._end, t)

    def _final(self, e: TranscriptFields) -> None:
        start = e.t_start if e.t_start is not None else e.t
        end = e.t_end if e.t_end is not None else e.t
        text = (e.text or "").strip()
        self.segments.add((self.finals, start, end))
        self.segment_labels.add((self.finals, start, text if len(text) <= 60 else text[:57] + "..."))
        self._rows.write(json.dumps([start, end, e.text or ""]) + "\n")
        self.finals += 1
        self._end = max(self._end, start, end)

    # ------------------------------------------------------------------ what the figures read
    @property
    def duration(self) -> float:
        return max(self._end, 1e-3)

    def faces(self) -> dict[str, list[tuple[float, float]]]:
        return {key: series.items() for key, series in self._faces.items()}

    def transcript_rows(self) -> Iterator[tuple[float, float, str]]:
        """Every final transcript segment (start, end, text), in order, from the temporary file."""
        self._rows.flush()
        self._rows.seek(0)
        for line in self._rows:
            start, end, text = json.loads(line)
            yield start, end, text
        self._rows.seek(0, os.SEEK_END)

    def close(self) -> None:
        self._rows.close()

    def __enter__(self) -> "Timeline":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


# ------------------------------------------------------------------------------ figures
def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def timeline_figure(tl: Timeline) -> Any:
    from matplotlib.figure import Figure  # Agg canvas by default; no pyplot, no display

    faces = tl.faces()
    rows = [3.0, 1.6] + ([1.6] if faces else []) + [1.4]
    fig = Figure(figsize=(12, sum(rows) + 0.8), layout="constrained")
    axes = fig.subplots(len(rows), 1, sharex=True, gridspec_kw={"height_ratios": rows})
    ax_score, ax_w = axes[0], axes[1]
    ax_face = axes[2] if faces else None
    ax_text = axes[-1]
    points = tl.sentiments.items()
    ts = [p[0] for p in points]
    hop = tl.hop if math.isfinite(tl.hop) else 0.5
    # Label bands: each estimate holds until the next one (one kept point stands for `stride` estimates).
    span = hop * tl.sentiments.stride
    bands: dict[str, list[tuple[float, float]]] = {}
    for i, (t, _, label, *_w) in enumerate(points):
        start = t - span if i == 0 else max(points[i - 1][0], t - span)
        bands.setdefault(LABEL_COLOURS.get(label, "#cccccc"), []).append((start, t - start))
    for colour, ranges in bands.items():
        ax_score.broken_barh(ranges, (-1.05, 2.1), facecolors=colour, alpha=0.18, lw=0)
    ax_score.plot(ts, [p[1] for p in points], color="black", lw=1.6, label="score P(pos) - P(neg)")
    ax_score.axhline(0, color="#555555", lw=0.6)
    ax_score.set_ylim(-1.05, 1.05)
    ax_score.set_ylabel("score")
    title = f"stream {tl.stream or ''}: sentiment over time"
    if tl.weights == "random":
        title += " (random CLIP weights: CLIP heads off, experts only)"
    ax_score.set_title(title, loc="left")
    from matplotlib.patches import Patch

    handles = [ax_score.get_lines()[0]] + [Patch(color=c, alpha=0.3, label=k) for k, c in LABEL_COLOURS.items()]
    ax_score.legend(handles=handles, loc="upper right", fontsize=8, ncols=4)
    for j, (name, colour) in enumerate(MODALITY_COLOURS.items()):
        ax_w.plot(ts, [p[3 + j] for p in points], color=colour, label=name)
    ax_w.set_ylim(-0.05, 1.05)
    ax_w.set_ylabel("modality\nweight")
    ax_w.legend(loc="upper right", fontsize=8, ncols=2)
    if ax_face is not None:
        for face_id, series in sorted(faces.items()):
            ax_face.plot([p[0] for p in series], [p[1] for p in series], marker=".", lw=1, label=f"face {face_id}")
        ax_face.set_ylim(-1.05, 1.05)
        ax_face.set_ylabel("face\nscore")
        ax_face.legend(loc="upper right", fontsize=8, ncols=4)
        if tl.faces_not_drawn:
            ax_face.set_title(f"{MAX_FACES} faces drawn, those tracked longest ({tl.faces_not_drawn} estimates of other "
                              "faces not drawn)", loc="left", fontsize=8)
    # The final transcript on the same axis: one bar per segment, its text beside it (rows cycle).
    segments = tl.segments.items()
    if segments:
        ax_text.hlines([2 - (i % 3) for i, _, _ in segments], [s for _, s, _ in segments], [e for _, _, e in segments],
                       color="#4c72b0", lw=4, capstyle="butt")
    for i, start, words in tl.segment_labels.items():
        ax_text.text(start, 2 - (i % 3) + 0.3, words, fontsize=8, va="bottom", clip_on=True)
    ax_text.set_ylim(-0.5, 3.2)
    ax_text.set_yticks([])
    ax_text.set_ylabel("transcript")
    ax_text.set_xlabel("media time (s)")
    ax_text.set_xlim(0, tl.duration)
    return fig


def latency_figure(tl: Timeline) -> Optional[Any]:
    from matplotlib.figure import Figure

    latencies = tl.latencies.values
    stages = (tl.summary or {}).get("latency") or {}
    stages = {k: v for k, v in stages.items() if v.count}
    if not latencies and not stages:
        return None
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_h, ax_s = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    if latencies:
        ax_h.hist(latencies, bins=min(40, max(5, len(latencies) // 3)), color="#4c72b0")
    sampled = f", {len(latencies)} sampled" if tl.latencies.seen > len(latencies) else ""
    ax_h.set_title(f"estimate latency (newest frame -> estimate), n={tl.latencies.seen}{sampled}", loc="left", fontsize=10)
    ax_h.set_xlabel("ms")
    ax_h.set_ylabel("estimates")
    names = list(stages)
    for j, (q, colour) in enumerate((("p50_ms", "#8fbc8f"), ("p95_ms", "#f0a35e"), ("p99_ms", "#d9534f"))):
        ax_s.barh([i + (j - 1) * 0.27 for i in range(len(names))], [getattr(stages[n], q) or 0 for n in names],
                  height=0.27, color=colour, label=q.replace("_ms", ""))
    ax_s.set_yticks(range(len(names)), names, fontsize=8)
    ax_s.invert_yaxis()
    ax_s.set_xscale("symlog", linthresh=10)
    ax_s.set_xlabel("ms (summary percentiles per stage)")
    ax_s.set_title("pipeline stage latency", loc="left", fontsize=10)
    if names:
        ax_s.legend(fontsize=8, loc="lower right")
    return fig


# ------------------------------------------------------------------------------ the page
def _fmt(t: float) -> str:
    return f"{int(t // 60)}:{t % 60:04.1f}"


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}img{max-width:100%;display:block}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left;vertical-align:top}
.t{color:#666;white-space:nowrap;font-variant-numeric:tabular-nums}.warn{color:#a15c00}.err{color:#b00020}"""

SUMMARY_KEYS = ("frames_in", "frames_processed", "frames_dropped", "frames_skipped", "audio_chunks_dropped", "audio_seconds",
                "media_seconds", "wall_seconds", "realtime_factor", "estimates", "transcripts")


def write_page(tl: Timeline, out: IO[str], title: str = "sentistream report") -> bytes:
    """Writes the HTML page of `tl` to `out` (the transcript rows streamed); returns the timeline PNG."""
    if tl.estimates == 0 and tl.transcripts == 0:
        raise UserError("the events hold no sentiment or transcript events: nothing to report")
    timeline_png = _png(timeline_figure(tl))
    lat = latency_figure(tl)
    lat_png = _png(lat) if lat is not None else None

    def img(data: bytes, alt: str, ident: str) -> str:
        return f'<img id="{ident}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    def put(*parts: str) -> None:
        out.write("\n".join(parts) + "\n")

    put(f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
        f"<p>stream <b>{html.escape(tl.stream or '')}</b> · {_fmt(tl.duration)} of media · {tl.estimates} estimates ("
        + ", ".join(f"{html.escape(k)} {v}" for k, v in sorted(tl.labels.items())) + f") · {tl.finals} transcript segments"
        + (" · <b>random CLIP weights</b>" if tl.weights == "random" else "") + "</p>")
    for kind, message in tl.messages:
        put(f'<p class={"err" if kind == "error" else "warn"}>{kind}: {html.escape(message)}</p>')
    if tl.messages_not_shown:
        put(f"<p class=warn>... and {tl.messages_not_shown} more warnings and errors (in the events file)</p>")
    put("<h2>Sentiment timeline</h2>", img(timeline_png, "sentiment timeline", "timeline"))
    put("<h2>Transcript</h2>", '<table id="transcript"><tr><th>from</th><th>to</th><th>text</th></tr>')
    for start, end, text in tl.transcript_rows():
        put(f"<tr><td class=t>{_fmt(start)}</td><td class=t>{_fmt(end)}</td><td>{html.escape(text)}</td></tr>")
    if not tl.finals:
        put("<tr><td colspan=3>(no speech transcribed)</td></tr>")
    put("</table>")
    if lat_png is not None:
        put("<h2>Latency</h2>", img(lat_png, "latency", "latency"))
    if tl.summary is not None:
        put("<h2>Summary</h2>", '<table id="summary">',
            *(f"<tr><th>{k}</th><td>{html.escape(json.dumps(tl.summary[k]))}</td></tr>" for k in SUMMARY_KEYS if k in tl.summary),
            "</table>")
    put("</body></html>")
    return timeline_png


def render_html(events: Iterable[Any], title: str = "sentistream report") -> tuple[str, bytes]:
    """(the HTML page, the timeline PNG) of events (dicts or checked events), in memory."""
    buf = io.StringIO()
    try:
        with Timeline.of(events) as tl:
            png = write_page(tl, buf, title)
    except BadEvent as exc:
        raise UserError(str(exc)) from None
    return buf.getvalue(), png


def _replace(path: Path, write: Any) -> None:
    """Writes `path` through a temporary file beside it, renamed over it when complete."""
    tmp: Optional[str] = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.absolute().parent)
        with os.fdopen(fd, "wb") as fh:
            write(fh)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_report(events: Iterable[Any], out: Optional[str | Path] = None, png: Optional[str | Path] = None,
                 title: str = "sentistream report") -> None:
    """Reads `events` (an EventReader, or event dicts) in one pass and writes the
    page to `out` and the timeline to `png` (either may be None)."""
    try:
        tl = Timeline.of(events)
    except BadEvent as exc:
        raise UserError(str(exc)) from None
    with tl:
        if tl.estimates == 0 and tl.transcripts == 0:
            source = getattr(events, "path", None) or "the events"
            raise UserError(f"{source} holds no sentiment or transcript events: nothing to report")
        timeline_png = b""
        if out is not None:
            def page(fh: IO[bytes]) -> None:
                nonlocal timeline_png
                text = io.TextIOWrapper(fh, encoding="utf-8", newline="\n")
                timeline_png = write_page(tl, text, title)
                text.flush()
                text.detach()

            _replace(Path(out), page)
        elif png is not None:
            timeline_png = write_page(tl, io.StringIO(), title)
        if png is not None:
            _replace(Path(png), lambda fh: fh.write(timeline_png))
