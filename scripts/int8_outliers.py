#!/usr/bin/env python3
"""Is ONNX Runtime's int8 safe for CLIP towers whose activations have outlier channels? Without real
CLIP weights (none can be downloaded here) this builds the case by construction: the same random
ViT-B-32 image tower, and a copy with a function-preserving rescale (a few channels of every block's
LayerNorm gain/bias x FACTOR, the next MatMul's input columns / FACTOR: the fp32 outputs are the
same, but those channels' activations are FACTOR x larger, like the outlier features trained
transformers are known for). Each int8 variant is compared with torch fp32 (min cosine over frames)
and timed at batch 1, 1 thread:

- dyn-int8-per-tensor: what `vision.quantize=int8` runs (dynamic activations, one scale per tensor);
- dyn-int8-per-channel-w: the same with per-channel weight scales;
- nbits8-bB-acc4: MatMulNBits 8-bit weights with int8 compute in blocks of B (activations quantised per block).

    .venv/bin/python scripts/int8_outliers.py --json docs/results/int8-outliers.json
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.backbone import create_backbone  # noqa: E402
from models.onnx_backend import OrtTower, cached_graph  # noqa: E402
from stream.config import load_config  # noqa: E402

CHANNELS = (5, 77, 300, 611)


def add_outliers(backbone, factor: float) -> None:
    """Function-preserving: LN gain/bias of CHANNELS x factor, the following MatMul's columns / factor."""
    with torch.no_grad():
        for blk in backbone.clip.visual.transformer.resblocks:
            for ln, weight in ((blk.ln_1, blk.attn.in_proj_weight), (blk.ln_2, blk.mlp.c_fc.weight)):
                ch = list(CHANNELS)
                ln.weight[ch] *= factor
                ln.bias[ch] *= factor
                weight[:, ch] /= factor


def int8_variants(graph: Path, work: Path) -> dict[str, Path]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    out = {"fp32": graph}
    for name, per_channel in (("dyn-int8-per-tensor", False), ("dyn-int8-per-channel-w", True)):
        path = work / name / "model.onnx"
        path.parent.mkdir()
        quantize_dynamic(str(graph), str(path), weight_type=QuantType.QInt8, per_channel=per_channel,
                         use_external_data_format=True, op_types_to_quantize=["MatMul", "Gemm"])
        out[name] = path
    for block in (32, 128):
        name = f"nbits8-b{block}-acc4"
        path = work / name / "model.onnx"
        path.parent.mkdir()
        q = MatMulNBitsQuantizer(onnx.load(str(graph)), algo_config=DefaultWeightOnlyQuantConfig(
            block_size=block, is_symmetric=True, accuracy_level=4, bits=8))
        q.process()
        q.model.save_model_to_file(str(path), use_external_data_format=True)
        out[name] = path
    return out


def measure(backbone, cfg, work: Path, reps: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    pixels = torch.cat([backbone.preprocess(torch.randint(0, 255, (1, 224, 224, 3), dtype=torch.uint8)) for _ in range(6)])
    with torch.inference_mode():
        ref = backbone.clip.encode_image(pixels).float()
    rows = {}
    graph = cached_graph(cfg.vision, backbone, "image", work)
    for name, path in int8_variants(graph, work).items():
        tower = OrtTower(path, ["CPUExecutionProvider"], 1, torch.device("cpu"))
        got = torch.cat([tower(pixels[i : i + 1]) for i in range(len(pixels))]).float()
        tower(pixels[:1])
        times = []
        for _ in range(reps):
            t = time.perf_counter()
            tower(pixels[:1])
            times.append(time.perf_counter() - t)
        rows[name] = {"min_cosine": round(F.cosine_similarity(ref, got).min().item(), 5),
                      "ms_per_frame": round(1000 * statistics.median(times), 1)}
        print(f"{name:24s} {rows[name]}", flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "default.yaml"))
    p.add_argument("--factor", type=float, default=30.0)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--json")
    args = p.parse_args(argv)
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's "consider pre-processing" advice
    torch.set_num_threads(1)
    cfg = load_config(args.config, ["vision.pretrained=random"])
    result = {"model": cfg.vision.model, "factor": args.factor, "channels": list(CHANNELS)}
    for case in ("random", "outliers"):
        backbone = create_backbone(cfg.vision)
        if case == "outliers":
            add_outliers(backbone, args.factor)
        print(f"-- {case}")
        with tempfile.TemporaryDirectory(prefix="int8-outliers-") as tmp:
            result[case] = measure(backbone, cfg, Path(tmp), args.reps)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
