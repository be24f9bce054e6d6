"""A visual report of one analysed recording: a self-contained HTML page (PNG figures embedded as
base64, inline CSS, no external assets) built from its events (JSON Lines).

Figures are drawn with matplotlib's object API on an Agg canvas (no pyplot state, no display):
the sentiment timeline (score line over label bands, per-modality weights, per-face scores when
the events carry `faces`) with the final transcript on the same time axis, and latency plots
(the estimates' own `latency_ms` as a histogram, the summary's per-stage percentiles)."""
from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any, Iterable, Optional

from models.errors import UserError

LABEL_COLOURS = {"negative": "#d62728", "neutral": "#9e9e9e", "positive": "#2ca02c"}
MODALITY_COLOURS = {"image": "#1f77b4", "text": "#ff7f0e"}


def load_events(path: str | Path) -> list[dict[str, Any]]:
    """Events of a JSONL file; UserError (one line) for a missing file or a line that is not an event."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"events file not found: {p} (write one with: sentistream run --source SRC --output {p.name})")
    events: list[dict[str, Any]] = []
    try:
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    event = json.loads(line)
                except json.JSONDecodeError:
                    raise UserError(f"{p} line {n} is not JSON: expected the JSON Lines `sentistream run --output` writes") from None
                if not isinstance(event, dict) or "type" not in event or "t" not in event:
                    raise UserError(f"{p} line {n} is not a sentistream event (no \"type\"/\"t\")")
                events.append(event)
    except UnicodeDecodeError:
        raise UserError(f"{p} is not a text file: expected the JSON Lines `sentistream run --output` writes") from None
    if not any(e["type"] in ("sentiment", "transcript") for e in events):
        raise UserError(f"{p} holds no sentiment or transcript events: nothing to report")
    return events


class Timeline:
    """What the figures need, pulled out of the events once."""

    def __init__(self, events: Iterable[dict[str, Any]]):
        events = list(events)
        self.sentiments = [e for e in events if e["type"] == "sentiment"]
        self.finals = [e for e in events if e["type"] == "transcript" and e.get("final")]
        self.messages = [e for e in events if e["type"] in ("warning", "error")]
        summaries = [e for e in events if e["type"] == "summary"]
        self.summary: Optional[dict[str, Any]] = summaries[-1] if summaries else None
        ends = [e["t"] for e in self.sentiments] + [e.get("t_end", e["t"]) for e in self.finals]
        self.duration = max(ends + [self.summary.get("media_seconds", 0.0) if self.summary else 0.0, 1e-3])
        self.stream = str(events[0].get("stream", "")) if events else ""
        self.weights = next((e.get("weights") for e in self.sentiments), None)

    def faces(self) -> dict[str, list[tuple[float, float]]]:
        out: dict[str, list[tuple[float, float]]] = {}
        for e in self.sentiments:
            for face in e.get("faces") or ():
                if isinstance(face, dict) and "score" in face:
                    out.setdefault(str(face.get("id", "?")), []).append((e["t"], float(face["score"])))
        return out


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
    ts = [e["t"] for e in tl.sentiments]
    hop = min((b - a for a, b in zip(ts, ts[1:]) if b > a), default=0.5)
    for e in tl.sentiments:  # label bands: each estimate holds until the next one
        ax_score.axvspan(e["t"] - hop, e["t"], color=LABEL_COLOURS.get(e.get("label"), "#cccccc"), alpha=0.18, lw=0)
    ax_score.plot(ts, [e.get("score", 0.0) for e in tl.sentiments], color="black", lw=1.6, label="score P(pos) - P(neg)")
    ax_score.axhline(0, color="#555555", lw=0.6)
    ax_score.set_ylim(-1.05, 1.05)
    ax_score.set_ylabel("score")
    title = f"stream {tl.stream}: sentiment over time"
    if tl.weights == "random":
        title += " (random CLIP weights: estimates carry no meaning)"
    ax_score.set_title(title, loc="left")
    from matplotlib.patches import Patch

    handles = [ax_score.get_lines()[0]] + [Patch(color=c, alpha=0.3, label=k) for k, c in LABEL_COLOURS.items()]
    ax_score.legend(handles=handles, loc="upper right", fontsize=8, ncols=4)
    for name, colour in MODALITY_COLOURS.items():
        ax_w.plot(ts, [e.get("modalities", {}).get(name, {}).get("weight", 0.0) for e in tl.sentiments], color=colour, label=name)
    ax_w.set_ylim(-0.05, 1.05)
    ax_w.set_ylabel("modality\nweight")
    ax_w.legend(loc="upper right", fontsize=8, ncols=2)
    if ax_face is not None:
        for face_id, points in sorted(faces.items()):
            ax_face.plot([p[0] for p in points], [p[1] for p in points], marker=".", lw=1, label=f"face {face_id}")
        ax_face.set_ylim(-1.05, 1.05)
        ax_face.set_ylabel("face\nscore")
        ax_face.legend(loc="upper right", fontsize=8, ncols=4)
    # The final transcript on the same axis: one bar per segment, its text beside it (rows cycle).
    for i, seg in enumerate(tl.finals):
        y = 2 - (i % 3)
        start, end = seg.get("t_start", seg["t"]), seg.get("t_end", seg["t"])
        ax_text.plot([start, end], [y, y], color="#4c72b0", lw=4, solid_capstyle="butt")
        words = seg.get("text", "").strip()
        ax_text.text(start, y + 0.3, words if len(words) <= 60 else words[:57] + "...", fontsize=8, va="bottom", clip_on=True)
    ax_text.set_ylim(-0.5, 3.2)
    ax_text.set_yticks([])
    ax_text.set_ylabel("transcript")
    ax_text.set_xlabel("media time (s)")
    ax_text.set_xlim(0, tl.duration)
    return fig


def latency_figure(tl: Timeline) -> Optional[Any]:
    from matplotlib.figure import Figure

    latencies = [e["latency_ms"] for e in tl.sentiments if isinstance(e.get("latency_ms"), (int, float))]
    stages = (tl.summary or {}).get("latency") or {}
    stages = {k: v for k, v in stages.items() if isinstance(v, dict) and v.get("count")}
    if not latencies and not stages:
        return None
    fig = Figure(figsize=(12, 3.6), layout="constrained")
    ax_h, ax_s = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.4]})
    if latencies:
        ax_h.hist(latencies, bins=min(40, max(5, len(latencies) // 3)), color="#4c72b0")
    ax_h.set_title(f"estimate latency (newest frame -> estimate), n={len(latencies)}", loc="left", fontsize=10)
    ax_h.set_xlabel("ms")
    ax_h.set_ylabel("estimates")
    names = list(stages)
    for j, (q, colour) in enumerate((("p50_ms", "#8fbc8f"), ("p95_ms", "#f0a35e"), ("p99_ms", "#d9534f"))):
        ax_s.barh([i + (j - 1) * 0.27 for i in range(len(names))], [stages[n].get(q) or 0 for n in names],
                  height=0.27, color=colour, label=q.replace("_ms", ""))
    ax_s.set_yticks(range(len(names)), names, fontsize=8)
    ax_s.invert_yaxis()
    ax_s.set_xscale("symlog", linthresh=10)
    ax_s.set_xlabel("ms (summary percentiles per stage)")
    ax_s.set_title("pipeline stage latency", loc="left", fontsize=10)
    if names:
        ax_s.legend(fontsize=8, loc="lower right")
    return fig


def _fmt(t: float) -> str:
    return f"{int(t // 60)}:{t % 60:04.1f}"


_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1240px}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}img{max-width:100%;display:block}
table{border-collapse:collapse;font-size:13px}td,th{border-bottom:1px solid #ddd;padding:3px 10px;text-align:left;vertical-align:top}
.t{color:#666;white-space:nowrap;font-variant-numeric:tabular-nums}.warn{color:#a15c00}.err{color:#b00020}"""


def render_html(events: list[dict[str, Any]], title: str = "sentistream report") -> tuple[str, bytes]:
    """(the HTML page, the timeline PNG)."""
    tl = Timeline(events)
    timeline_png = _png(timeline_figure(tl))
    lat = latency_figure(tl)
    lat_png = _png(lat) if lat is not None else None

    def img(data: bytes, alt: str, ident: str) -> str:
        return f'<img id="{ident}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'

    counts: dict[str, int] = {}
    for e in tl.sentiments:
        counts[e.get("label", "?")] = counts.get(e.get("label", "?"), 0) + 1
    parts = [f"<!doctype html><html lang=en><head><meta charset=utf-8><title>{html.escape(title)}</title>",
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(title)}</h1>",
             f"<p>stream <b>{html.escape(tl.stream)}</b> · {_fmt(tl.duration)} of media · {len(tl.sentiments)} estimates ("
             + ", ".join(f"{html.escape(k)} {v}" for k, v in sorted(counts.items())) + f") · {len(tl.finals)} transcript segments"
             + (" · <b>random CLIP weights</b>" if tl.weights == "random" else "") + "</p>"]
    for m in tl.messages:
        cls = "err" if m["type"] == "error" else "warn"
        parts.append(f'<p class={cls}>{m["type"]}: {html.escape(str(m.get("message", "")))}</p>')
    parts += ["<h2>Sentiment timeline</h2>", img(timeline_png, "sentiment timeline", "timeline")]
    parts += ["<h2>Transcript</h2>", '<table id="transcript"><tr><th>from</th><th>to</th><th>text</th></tr>']
    for seg in tl.finals:
        parts.append(f'<tr><td class=t>{_fmt(seg.get("t_start", seg["t"]))}</td><td class=t>{_fmt(seg.get("t_end", seg["t"]))}</td>'
                     f'<td>{html.escape(seg.get("text", ""))}</td></tr>')
    if not tl.finals:
        parts.append("<tr><td colspan=3>(no speech transcribed)</td></tr>")
    parts.append("</table>")
    if lat_png is not None:
        parts += ["<h2>Latency</h2>", img(lat_png, "latency", "latency")]
    if tl.summary is not None:
        keep = ["frames_in", "frames_processed", "frames_dropped", "frames_skipped", "audio_chunks_dropped", "audio_seconds",
                "media_seconds", "wall_seconds", "realtime_factor", "estimates", "transcripts"]
        parts += ["<h2>Summary</h2>", '<table id="summary">']
        parts += [f"<tr><th>{k}</th><td>{html.escape(json.dumps(tl.summary[k]))}</td></tr>" for k in keep if k in tl.summary]
        parts.append("</table>")
    parts.append("</body></html>")
    return "\n".join(parts), timeline_png


def write_report(events: list[dict[str, Any]], out: Optional[str | Path] = None, png: Optional[str | Path] = None,
                 title: str = "sentistream report") -> None:
    page, timeline_png = render_html(events, title)
    for path, data in ((out, page.encode("utf-8")), (png, timeline_png)):
        if path is None:
            continue
        try:
            Path(path).write_bytes(data)
        except OSError as exc:
            raise UserError(f"cannot write {path}: {exc.strerror}") from None
