"""Server memory when a `/ws` client sends huge frames (issue 25): a real `sentistream serve`
(tiny random CLIP) gets 4 frames of each case over one WebSocket; the server's peak RSS (VmHWM)
after them, against its peak before, and what it answered, go to --out under --label.

    python scripts/bench_ws_frames.py [--root DIR (a checkout to serve from; default this one)] [--label after]
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import aiohttp
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
CASES = {  # name -> (mode, size, format)
    "png_16000x16000": ("L", (16000, 16000), "PNG"),
    "jpeg_8000x8000": ("RGB", (8000, 8000), "JPEG"),
    "jpeg_7680x4320": ("RGB", (7680, 4320), "JPEG"),
}


def payload(case: str) -> bytes:
    mode, size, fmt = CASES[case]
    buf = io.BytesIO()
    Image.new(mode, size, 90 if mode == "L" else (120, 30, 200)).save(buf, fmt)
    return buf.getvalue()


def peak_mb(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) // 1024
    return out


async def one(root: Path, case: str, port: int) -> dict:
    data = payload(case)
    cmd = [sys.executable, "-m", "stream.cli", "serve", "--config", str(root / "configs" / "tiny-test.yaml"), "--port", str(port),
           "--set", "server.max_message_bytes=4194304"]
    proc = subprocess.Popen(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)}, stderr=subprocess.PIPE, text=True)
    try:
        while "serving on" not in (line := proc.stderr.readline()):
            if not line and proc.poll() is not None:
                raise SystemExit(f"serve exited {proc.returncode}")
        await asyncio.sleep(2)
        before = peak_mb(proc.pid)
        replies = []
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"ws://127.0.0.1:{port}/ws") as ws:
                await ws.send_json({"type": "start", "video": {"format": "jpeg"}})
                await ws.receive_json(timeout=30)
                for i in range(4):
                    await ws.send_bytes(struct.pack("<cd", b"V", i / 10) + data)
                await ws.send_json({"type": "end"})
                async with asyncio.timeout(120):
                    async for msg in ws:
                        if msg.type == aiohttp.WSMsgType.TEXT:
                            replies.append(json.loads(msg.data))
        await asyncio.sleep(1)
        after = peak_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    last = replies[-1] if replies else {}
    return {"payload_kb": len(data) // 1024, "peak_rss_before_mb": before["VmHWM"], "peak_rss_after_mb": after["VmHWM"],
            "answer": {k: last[k] for k in ("type", "code", "message", "frames_in") if k in last}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(ROOT))
    ap.add_argument("--label", default="after")
    ap.add_argument("--port", type=int, default=8791)
    ap.add_argument("--out", default=str(ROOT / "docs" / "results" / "bench-ws-frames.json"))
    args = ap.parse_args()
    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"about": __doc__.split("\n\n")[0]}
    runs = doc.setdefault("runs", {}).setdefault(args.label, {})
    for case in CASES:
        runs[case] = asyncio.run(one(Path(args.root), case, args.port))
        print(args.label, case, json.dumps(runs[case]), flush=True)
        out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
