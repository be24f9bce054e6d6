#!/usr/bin/env python3
"""CLIP tower cost per frame, torch vs ONNX Runtime (fp32 and dynamic int8) vs torch dynamic int8, in ONE run (interleaved
rounds, so that the ratios survive a busy machine), plus each variant's parity against torch fp32.

    .venv/bin/python scripts/clip_backends.py --json /tmp/clip-backends.json
    .venv/bin/python scripts/clip_backends.py --config configs/tiny-test.yaml --rounds 3   # quick

Measures the image tower on preprocessed pixels (preprocessing is the same torch code for all
variants) at batch 1 and 4, with 1 and 2 threads, and one text pass of 77 tokens (batch 1). The ONNX
graphs come from (or go into) the normal cache: $SENTISTREAM_CACHE/onnx or ~/.cache/sentistream/onnx.
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a file from a checkout: this checkout's models/ and stream/
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.backbone import create_backbone  # noqa: E402
from models.onnx_backend import OrtTower, cached_graph, quantized_graph  # noqa: E402
from stream.config import load_config  # noqa: E402


def quantized_towers(backbone):
    """torch.ao dynamic int8 of the towers' nn.Linear layers (MLPs and attention out-projections of
    open_clip's fused-QKV attention; the QKV in-projection is a raw parameter and stays fp32)."""
    from torch.ao.quantization import quantize_dynamic

    q = copy.deepcopy(backbone)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated (torchao replaces it): said in the docs
        q.clip.visual = quantize_dynamic(q.clip.visual, {torch.nn.Linear}, dtype=torch.qint8)
        q.clip.transformer = quantize_dynamic(q.clip.transformer, {torch.nn.Linear}, dtype=torch.qint8)
    q.clip.transformer.get_cast_dtype = lambda: torch.float32  # open_clip reads it off a (now packed) Linear weight
    return q.clip.encode_image, q._text_token_states

def timed(fn, x, reps: int) -> float:
    """Median seconds of one call over `reps` calls (after one warm-up)."""
    with torch.inference_mode():
        fn(x)
        out = []
        for _ in range(reps):
            t = time.perf_counter()
            fn(x)
            out.append(time.perf_counter() - t)
    return statistics.median(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=None, help="YAML config (default: ViT-B-32, random weights)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (each variant once per round)")
    p.add_argument("--reps", type=int, default=3, help="timed calls per variant per round (median)")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--batches", default="1,4")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    overrides = ["vision.device=cpu"] + ([] if args.config else ["vision.model=ViT-B-32", "vision.pretrained=random"])
    cfg = load_config(args.config, overrides)
    bb = create_backbone(cfg.vision)
    t0 = time.perf_counter()
    graphs = {t: cached_graph(cfg.vision, bb, t) for t in ("image", "text")}
    export_s = time.perf_counter() - t0
    q_image, q_text = quantized_towers(bb)
    threads = [int(t) for t in args.threads.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    ort = {n: {t: OrtTower(graphs[t], ["CPUExecutionProvider"], n, bb.device) for t in graphs} for n in threads}
    qgraphs = {t: quantized_graph(g) for t, g in graphs.items()}  # vision.quantize=int8
    ort_q = {n: {t: OrtTower(qgraphs[t], ["CPUExecutionProvider"], n, bb.device) for t in qgraphs} for n in threads}

    gen = torch.Generator().manual_seed(0)
    pixels = {b: torch.randn(b, 3, *bb.image_size, generator=gen) for b in batches}
    tokens = bb.tokenize(["well that was a surprisingly pleasant conversation, thank you all " * 6])
    variants = {
        "torch": (bb.clip.encode_image, bb._text_token_states),
        "int8": (q_image, q_text),
    }

    # Parity against torch fp32 on the same inputs (batch 4 images, one long text: every token).
    parity = {}
    with torch.inference_mode():
        ref_i, ref_t = bb.clip.encode_image(pixels[max(batches)]), bb._text_token_states(tokens)[0]
        onnx_variants = {"onnx": (ort[threads[0]]["image"], ort[threads[0]]["text"]),
                         "onnx_int8": (ort_q[threads[0]]["image"], ort_q[threads[0]]["text"])}
        for name, (img, txt) in {**variants, **onnx_variants}.items():
            parity[name] = {
                "image_min_cos": F.cosine_similarity(ref_i, img(pixels[max(batches)]).float()).min().item(),
                "text_token_min_cos": F.cosine_similarity(ref_t, txt(tokens)[0].float()).min().item(),
            }

    samples: dict[str, list[float]] = {}
    for _ in range(args.rounds):
        for n in threads:
            torch.set_num_threads(n)
            runs = {**{f"{v}/t{n}": fns for v, fns in variants.items()}, f"onnx/t{n}": (ort[n]["image"], ort[n]["text"]),
                    f"onnx_int8/t{n}": (ort_q[n]["image"], ort_q[n]["text"])}
            for name, (img, txt) in runs.items():
                for b in batches:
                    samples.setdefault(f"{name}/image_b{b}", []).append(timed(img, pixels[b], args.reps) / b)
                samples.setdefault(f"{name}/text_b1", []).append(timed(txt, tokens, args.reps))
    ms = {k: round(1000 * statistics.median(v), 2) for k, v in samples.items()}
    ratios = {}
    for n in threads:
        for b in [*(f"image_b{b}" for b in batches), "text_b1"]:
            base = ms[f"torch/t{n}/{b}"]
            ratios[f"t{n}/{b}"] = {v: round(base / ms[f"{v}/t{n}/{b}"], 2) for v in ("onnx", "onnx_int8", "int8")}
    report = {
        "model": cfg.vision.model, "weights": bb.weights, "onnx_export_or_load_s": round(export_s, 1),
        "ms_per_frame_median": ms, "speedup_vs_torch": ratios, "parity_vs_torch_fp32": parity,
        "rounds": args.rounds, "reps": args.reps, "torch": torch.__version__,
    }
    import onnxruntime

    report["onnxruntime"] = onnxruntime.__version__
    text = json.dumps(report, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
