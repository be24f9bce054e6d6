"""`vision.backend: onnx`: the CLIP towers exported once with torch.onnx and run by ONNX Runtime.

Each tower (image: pixels -> pooled projected embedding; text: tokens -> projected token states) is
exported with the dynamo exporter on first use and cached on disk under a key of everything the graph
depends on: model name, architecture, a hash of the weights, precision, opset, the torch version
(``$SENTISTREAM_CACHE/onnx``, else ``$XDG_CACHE_HOME`` or ``~/.cache``, ``/sentistream/onnx``).
Later runs load the cached graph. Only the towers' forward passes move: preprocessing, tokenising,
the text mask / pooling index and the prompt embeddings stay in `ClipBackbone`.

Execution providers (`vision.onnx_provider`): ``auto`` takes TensorRT, then CUDA, where
onnxruntime has them and the backbone is on a GPU, else the CPU; an explicit provider that this
onnxruntime lacks falls back to the next one with one warning line.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .backbone import ClipBackbone
from .config import VisionConfig
from .errors import UserError, one_line
from .towers import Backbone

log = logging.getLogger(__name__)

OPSET = 18
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
_FALLBACK = ("tensorrt", "cuda", "cpu")  # each falls back to the ones after it


def cache_root() -> Path:
    if os.environ.get("SENTISTREAM_CACHE"):
        return Path(os.environ["SENTISTREAM_CACHE"]).expanduser() / "onnx"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sentistream" / "onnx"


def weights_hash(module: torch.nn.Module) -> str:
    """Identity of the weights: every parameter and buffer's name, dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def graph_key(cfg: VisionConfig, backbone: ClipBackbone, tower: str, weights: str | None = None) -> str:
    """`weights`: `weights_hash(backbone.clip)` when the caller has it already (it reads every parameter)."""
    parts = {
        "model": cfg.model,
        "arch": cfg.arch,
        "weights": weights or weights_hash(backbone.clip),
        "dtype": str(backbone.dtype),
        "device": backbone.device.type,  # fp16 graphs exported on a GPU differ from CPU ones
        "opset": OPSET,
        "torch": torch.__version__,
        "tower": tower,
    }
    if tower == "text" and backbone.text_prefix_exact:  # any token count up to the context length (earlier: 77 only)
        parts["tokens"] = "prefix"
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in cfg.model)
    return f"{safe}-{tower}-{str(backbone.dtype).removeprefix('torch.')}-op{OPSET}-{digest}"


class _ImageTower(torch.nn.Module):
    def __init__(self, backbone: ClipBackbone):
        super().__init__()
        self.clip = backbone.clip

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixels)  # the torch graph, whatever tower the backbone runs now


class _TextTower(torch.nn.Module):
    def __init__(self, backbone: ClipBackbone):
        super().__init__()
        self.backbone = backbone

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.backbone._text_token_states(tokens)  # the torch graph, not the swapped-in tower


def _example(backbone: ClipBackbone, tower: str) -> torch.Tensor:
    if tower == "image":
        return torch.randn(2, 3, *backbone.image_size, device=backbone.device, dtype=backbone.dtype)
    return backbone.tokenize(["an example", "another example text"]).to(backbone.device)


def export_tower(backbone: ClipBackbone, tower: str, path: Path) -> None:
    """torch.onnx (dynamo exporter) of one tower with a dynamic batch axis, written to `path`; a
    causal text tower's token axis is dynamic too (`Backbone.text_prefix_exact`)."""
    module = (_ImageTower if tower == "image" else _TextTower)(backbone).eval()
    name = "pixels" if tower == "image" else "tokens"
    batch = torch.export.Dim("batch", min=1, max=4096)
    axes: dict[int, Any] = {0: batch}
    if tower == "text" and backbone.text_prefix_exact:
        axes[1] = torch.export.Dim("tokens", min=2, max=backbone.context_length)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter; a failure still raises
        torch.onnx.export(
            module, (_example(backbone, tower),), str(path), dynamo=True, input_names=[name], output_names=["out"],
            dynamic_shapes=(axes,), opset_version=OPSET, external_data=True, verbose=False, report=False,
        )


def _install(staging: Path, final: Path) -> None:
    """Rename a finished private directory into place. Concurrent writers are safe: the first rename
    wins, and a lost race is fine when the winner's graph is there."""
    try:
        os.replace(staging, final)
    except OSError:
        if not (final / "model.onnx").is_file():
            raise


def cached_graph(cfg: VisionConfig, backbone: ClipBackbone, tower: str, root: Path | None = None,
                 weights: str | None = None) -> Path:
    """The tower's .onnx in the cache, exported first if missing (into a private directory, then
    `_install`ed). `weights`: the backbone's `weights_hash`, if the caller has it already."""
    root = root or cache_root()
    final = root / graph_key(cfg, backbone, tower, weights)
    graph = final / "model.onnx"
    if graph.is_file():
        return graph
    failed = root / f"{final.name}.failed"  # an export that failed once: `auto` does not retry it every start
    if cfg.backend == "auto" and failed.is_file():
        raise UserError(failed.read_text().strip() + f" (cached: delete {failed} to retry)")
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=root, ignore_cleanup_errors=True) as tmp:
        # Said at warning level: a first run pauses here (~15 s tiny, ~1 min ViT-B-32 on 2 CPU cores).
        log.warning("exporting the CLIP %s tower of %s to ONNX Runtime, once (cached in %s; vision.backend=torch skips it)",
                    tower, cfg.model, root)
        try:
            export_tower(backbone, tower, Path(tmp) / "model.onnx")
        except Exception as exc:
            reason = f"vision.backend=onnx: exporting the {cfg.model} {tower} tower failed ({one_line(exc, 160)}); use vision.backend=torch"
            failed.write_text(reason + "\n")
            raise UserError(reason) from None
        failed.unlink(missing_ok=True)
        _install(Path(tmp), final)
    return graph


def quantized_graph(graph: Path, root: Path | None = None) -> Path:
    """The int8 twin of a cached fp32 graph (ONNX Runtime dynamic quantisation: MatMul weights int8,
    activations quantised per call), made once next to it and cached the same way."""
    root = root or graph.parent.parent
    final = root / f"{graph.parent.name}-int8"
    out = final / "model.onnx"
    if out.is_file():
        return out
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=root, ignore_cleanup_errors=True) as tmp:
        quiet = logging.getLogger()  # the quantizer advises "pre-processing" on the root logger
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            # MatMul/Gemm only: ConvInteger (the dynamic int8 conv) is slower than fp32 convs on CPUs.
            quantize_dynamic(str(graph), str(Path(tmp) / "model.onnx"), weight_type=QuantType.QInt8, use_external_data_format=True,
                             op_types_to_quantize=["MatMul", "Gemm"])
        except Exception as exc:
            raise UserError(f"vision.quantize=int8: quantising {graph.parent.name} failed ({one_line(exc, 160)}); "
                            f"use vision.quantize=none") from None
        finally:
            quiet.setLevel(level)
        _install(Path(tmp), final)
    return out


def resolve_backend(cfg: VisionConfig, backbone: Backbone) -> str:
    """`vision.backend` as it will run. auto = onnx for open_clip towers on the CPU, where ONNX
    Runtime measured faster per frame at batch 1 on 2 quiet cores (ViT-B-32 1.7x, MobileCLIP2-S0
    1.5x, SigLIP2 B/16 2.4x: docs/benchmarks.md), when onnxruntime is importable; torch otherwise
    (GPUs, transformers `hf:` towers)."""
    if cfg.backend != "auto":
        return cfg.backend
    if not isinstance(backbone, ClipBackbone) or backbone.device.type != "cpu":
        return "torch"
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return "torch"
    return "onnx"


def choose_providers(requested: str, device: torch.device, available: list[str]) -> tuple[list[str], str | None]:
    """(providers in priority order, warning line or None). `auto`: the best one there is for the device."""
    if requested == "auto":
        wanted = "tensorrt" if device.type == "cuda" else "cpu"
        chain = [p for p in _FALLBACK[_FALLBACK.index(wanted):] if PROVIDERS[p] in available]
        warning = None
        if device.type == "cuda" and chain[0] == "cpu":
            warning = ("vision.backend=onnx: this onnxruntime has no CUDA or TensorRT execution provider "
                       "(install onnxruntime-gpu for them); the CLIP towers run on the CPU")
        return [PROVIDERS[p] for p in chain], warning
    chain = [p for p in _FALLBACK[_FALLBACK.index(requested):] if PROVIDERS[p] in available]
    warning = None
    if chain[0] != requested:
        warning = (f"vision.onnx_provider={requested}: this onnxruntime has no {PROVIDERS[requested]} "
                   f"(has: {', '.join(available)}); using {PROVIDERS[chain[0]]}")
    return [PROVIDERS[p] for p in chain], warning


class OrtTower:
    """One ONNX Runtime session standing in for a tower: torch tensor in, torch tensor out (on the backbone's device)."""

    def __init__(self, graph: Path, providers: list[str], threads: int, device: torch.device):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: provider set-up chatter is ours to say in one line
        self.session = ort.InferenceSession(str(graph), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.device = device
        self.providers = self.session.get_providers()

    def __deepcopy__(self, memo: dict) -> "OrtTower":
        return self  # a session cannot be copied; it is immutable and `run` is thread-safe, so copies share it

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: x.detach().cpu().numpy()})[0]
        return torch.from_numpy(np.ascontiguousarray(out)).to(self.device)


def use_onnx(backbone: ClipBackbone, cfg: VisionConfig, threads: int | None = None, root: Path | None = None) -> dict[str, Any]:
    """Swap the backbone's towers for ONNX Runtime sessions. Returns what was chosen (providers, graphs)."""
    if not isinstance(backbone, ClipBackbone):
        raise UserError(f"vision.backend=onnx exports open_clip towers only; '{cfg.model}' is a transformers checkpoint: "
                        f"use vision.backend=torch")
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("vision.backend=onnx needs onnxruntime (pip install onnxruntime); or use vision.backend=torch") from None
    providers, warning = choose_providers(cfg.onnx_provider, backbone.device, list(ort.get_available_providers()))
    if warning:
        log.warning(warning)
    n = threads or torch.get_num_threads()
    towers: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    graphs = {}
    weights = weights_hash(backbone.clip)  # once for both towers' keys: it reads every parameter
    for tower in ("image", "text"):
        graphs[tower] = cached_graph(cfg, backbone, tower, root, weights)
        if cfg.quantize == "int8" and providers[0] == PROVIDERS["cpu"]:
            graphs[tower] = quantized_graph(graphs[tower], root)
        towers[tower] = OrtTower(graphs[tower], providers, n, backbone.device)
    backbone.image_tower = towers["image"]
    backbone.text_tower = towers["text"]  # takes the token counts `text_prefix_exact` says (export_tower)
    chosen = towers["image"].providers  # type: ignore[attr-defined]
    if chosen[0] == PROVIDERS["tensorrt"]:
        # TensorRT builds an engine per range of input shapes it has seen: full-width token rows
        # keep one engine instead of a rebuild each time a longer window text arrives.
        backbone.text_prefix_exact = False
    backbone.backend = "onnx-int8" if "-int8" in graphs["image"].parent.name else "onnx"
    log.info("CLIP towers on ONNX Runtime (%s, %d threads%s)", chosen[0], n, ", int8" if backbone.backend == "onnx-int8" else "")
    return {"providers": chosen, "graphs": graphs, "warning": warning}
