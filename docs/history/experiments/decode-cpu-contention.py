"""Why the decode stage costs more CPU inside the pipeline than alone.

Decodes a 640x480 @ 30 fps clip the "before" way (every frame to full-size RGB) and the "after" way
(`AvSource` with a `FramePolicy`: only the packets kept frames depend on, 2 frames/s scaled to 224 px),
measuring the decoding thread's own CPU time (`time.thread_time`, as `profile`'s `decode_cpu` stage
does) with nothing beside it and with one other thread of the same process running:
  matmul  numpy float32 matrix products (releases the GIL: another core busy, memory traffic)
  torch   the ViT-B-32 image tower at batch 1, 1 thread (releases the GIL in the kernels)
  pyspin  a pure-Python loop (holds the GIL whenever it runs)
Each case runs before/after twice and keeps the lower CPU time.

    .venv/bin/python docs/history/experiments/decode-cpu-contention.py /tmp/clip-640x480.mp4

(a clip: `scripts/media.py:make_webcam_clip`, or the one `bench.py --webcam --work-dir DIR` leaves in DIR)
"""
import logging
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
from bench import decode_after, decode_before  # noqa: E402  (the loops `bench.py --webcam` times)

logging.disable(logging.WARNING)
torch.set_num_threads(1)
PATH = Path(sys.argv[1])


def before() -> None:
    decode_before(PATH, float("inf"))


def after() -> None:
    decode_after(PATH, float("inf"))


def cpu_of(fn) -> float:
    started = time.thread_time()
    fn()
    return time.thread_time() - started


stop = threading.Event()


def load(kind: str) -> None:
    if kind == "matmul":
        a = np.random.rand(512, 512).astype(np.float32)
        while not stop.is_set():
            a @ a
    elif kind == "torch":
        import open_clip

        tower, x = open_clip.create_model("ViT-B-32").visual.eval(), torch.randn(1, 3, 224, 224)
        with torch.inference_mode():
            while not stop.is_set():
                tower(x)
    elif kind == "pyspin":
        while not stop.is_set():
            sum(range(1000))


for kind in ("none", "matmul", "torch", "pyspin"):
    stop.clear()
    thread = None
    if kind != "none":
        thread = threading.Thread(target=load, args=(kind,))
        thread.start()
        time.sleep(3.0 if kind == "torch" else 0.5)
    cpu: dict[str, list[float]] = {}
    for name, fn in (("before", before), ("after", after), ("before", before), ("after", after)):
        cpu.setdefault(name, []).append(round(cpu_of(fn), 3))
    stop.set()
    if thread is not None:
        thread.join()
    b, a = min(cpu["before"]), min(cpu["after"])
    print(f"{kind:7s} before {b:.3f} s  after {a:.3f} s  ratio {b / a:.2f}", flush=True)
