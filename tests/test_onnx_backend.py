"""`vision.backend: onnx`: the CLIP towers exported with torch.onnx and run by ONNX Runtime give the
same features as torch (cosine >= 0.999 per image / per valid token), the graphs are cached by what
they depend on, and a missing execution provider falls back with one warning line."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models import onnx_backend
from models.backbone import create_backbone
from models.errors import UserError
from models.onnx_backend import OrtTower, cached_graph, choose_providers, graph_key, resolve_backend, use_onnx
from stream.config import load_config
from tests.conftest import TINY_CONFIG

TEXTS = ["", "what a wonderful day, I love it", "this is terrible and I hate waiting " * 8, "ok"]


def _frames(seed: int, sizes) -> list[np.ndarray]:
    gen = np.random.default_rng(seed)
    return [gen.integers(0, 256, size=(h, w, 3), dtype=np.uint8) for h, w in sizes]


def _parity(torch_bb, onnx_bb) -> dict[str, float]:
    """Min cosine over images (batch 1, and a batch of mixed sizes) and over every valid text token."""
    cos = {}
    single = _frames(1, [(48, 80)])[0]
    cos["image_b1"] = F.cosine_similarity(torch_bb.encode_images(single), onnx_bb.encode_images(single)).min().item()
    frames = _frames(2, [(64, 64), (120, 90), (33, 200), (64, 64), (240, 320)])
    a, b = torch_bb.encode_images(frames), onnx_bb.encode_images(frames)
    assert a.shape == b.shape and b.dtype == torch.float32
    cos["image_b5"] = F.cosine_similarity(a, b).min().item()
    ta, tb = torch_bb.encode_texts(TEXTS), onnx_bb.encode_texts(TEXTS)
    assert ta.states.shape == tb.states.shape and tb.states.dtype == torch.float32
    assert torch.equal(ta.mask, tb.mask) and torch.equal(ta.pooled_index, tb.pooled_index)
    cos["text_tokens"] = F.cosine_similarity(ta.states[ta.mask], tb.states[tb.mask]).min().item()
    rows = torch.arange(len(TEXTS))
    cos["text_pooled"] = F.cosine_similarity(ta.states[rows, ta.pooled_index], tb.states[rows, tb.pooled_index]).min().item()
    return cos


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache-home") / "onnx"  # what $SENTISTREAM_CACHE=cache-home gives


@pytest.fixture(scope="module")
def tiny_pair(onnx_cache):
    cfg = load_config(TINY_CONFIG, ["vision.backend=onnx", "vision.onnx_provider=cpu"])
    torch_bb = create_backbone(cfg.vision)
    onnx_bb = create_backbone(cfg.vision)  # seeded "random": the same weights
    chosen = use_onnx(onnx_bb, cfg.vision, threads=1, root=onnx_cache)
    return cfg, torch_bb, onnx_bb, chosen


def test_tiny_onnx_matches_torch(tiny_pair):
    _, torch_bb, onnx_bb, chosen = tiny_pair
    assert onnx_bb.backend == "onnx" and isinstance(onnx_bb.image_tower, OrtTower) and isinstance(onnx_bb.text_tower, OrtTower)
    assert chosen["providers"][0] == "CPUExecutionProvider" and chosen["warning"] is None
    cos = _parity(torch_bb, onnx_bb)
    assert min(cos.values()) >= 0.999, cos



def test_text_graph_takes_any_token_count_up_to_the_context(tiny_pair):
    """The causal text tower is exported with a dynamic token axis: a pass over the batch's longest
    sequence (what `encode_text_tokens` runs) matches the torch pass over all 77 positions."""
    _, torch_bb, onnx_bb, _ = tiny_pair
    assert onnx_bb.text_prefix_exact
    tokens = torch_bb.tokenize(TEXTS)
    with torch.inference_mode():
        full = torch_bb._text_token_states(tokens)
    for n in (2, 9, 77):
        out = onnx_bb.text_tower(tokens[:, :n])
        assert out.shape == (len(TEXTS), n, torch_bb.embed_dim)
        assert F.cosine_similarity(out.reshape(-1, out.shape[-1]), full[:, :n].reshape(-1, out.shape[-1])).min() >= 0.999


def test_text_rows_stay_full_width_when_tensorrt_runs_the_graphs(tiny_pair, onnx_cache, monkeypatch):
    """TensorRT builds an engine per input-shape range: text rows keep the context length there, so
    a longer window text never triggers a rebuild. (No TensorRT here: the session runs on the CPU and
    only reports TensorRT as its provider.)"""
    cfg, torch_bb, _, _ = tiny_pair

    class ReportsTensorrt(OrtTower):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.providers = ["TensorrtExecutionProvider", *self.providers]

    monkeypatch.setattr(onnx_backend, "OrtTower", ReportsTensorrt)
    bb = create_backbone(cfg.vision)
    use_onnx(bb, cfg.vision, threads=1, root=onnx_cache)
    widths = []
    tower = bb.text_tower
    bb.text_tower = lambda t: widths.append(t.shape[1]) or tower(t)
    ts, ref = bb.encode_texts(TEXTS), torch_bb.encode_texts(TEXTS)
    assert not bb.text_prefix_exact and widths == [torch_bb.context_length]
    assert F.cosine_similarity(ts.states[ts.mask], ref.states[ref.mask]).min() >= 0.999

def test_a_model_on_onnx_runtime_can_be_deep_copied(tiny_pair):
    import copy

    _, _, onnx_bb, _ = tiny_pair
    twin = copy.deepcopy(onnx_bb)  # e.g. a second engine built from a copy of the model
    frames = _frames(6, [(64, 64)])
    assert twin.image_tower is onnx_bb.image_tower  # the session is shared, not copied
    assert torch.equal(twin.encode_images(frames), onnx_bb.encode_images(frames))


def test_graphs_are_cached_by_weights(tiny_pair, onnx_cache, monkeypatch):
    cfg, torch_bb, _, chosen = tiny_pair
    assert {p.parent.name for p in chosen["graphs"].values()} == {graph_key(cfg.vision, torch_bb, t) for t in ("image", "text")}
    assert all(p.is_file() for p in chosen["graphs"].values())
    # A second start loads the cached graphs: no export.
    monkeypatch.setattr(onnx_backend, "export_tower", lambda *a: pytest.fail("exported again despite a cached graph"))
    again = create_backbone(cfg.vision)
    assert use_onnx(again, cfg.vision, threads=1, root=onnx_cache)["graphs"] == chosen["graphs"]
    # Other weights (a fine-tuned or different checkpoint of the same model): another key, never the stale graph.
    with torch.no_grad():
        again.clip.visual.proj.add_(0.01)
    assert graph_key(cfg.vision, again, "image") != graph_key(cfg.vision, torch_bb, "image")
    with pytest.raises(BaseException, match="exported again"):
        cached_graph(cfg.vision, again, "image", onnx_cache)


def test_build_model_with_onnx_backend(tiny_pair, onnx_cache, monkeypatch):
    from models.factory import build_model

    cfg, torch_bb, _, _ = tiny_pair
    monkeypatch.setenv("SENTISTREAM_CACHE", str(onnx_cache.parent))
    # $SENTISTREAM_CACHE/onnx already holds this model's graphs: the factory finds them there.
    monkeypatch.setattr(onnx_backend, "export_tower", lambda *a: pytest.fail("the factory did not look in $SENTISTREAM_CACHE/onnx"))
    model = build_model(cfg)
    assert model.backbone.backend == "onnx"
    frames = _frames(3, [(64, 64)] * 3)
    assert F.cosine_similarity(model.backbone.encode_images(frames), torch_bb.encode_images(frames)).min() >= 0.999


def test_missing_provider_falls_back_with_one_warning(tiny_pair, onnx_cache, caplog):
    import onnxruntime as ort

    cfg, *_ = tiny_pair
    available = ort.get_available_providers()
    if "CUDAExecutionProvider" in available:
        pytest.skip("this onnxruntime has the CUDA provider: nothing to fall back from")
    cuda_cfg = cfg.vision.model_copy(update={"onnx_provider": "cuda"})
    bb = create_backbone(cfg.vision)
    with caplog.at_level(logging.WARNING, logger="models.onnx_backend"):
        chosen = use_onnx(bb, cuda_cfg, threads=1, root=onnx_cache)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "models.onnx_backend"]
    assert len(warnings) == 1 and "\n" not in warnings[0], warnings
    assert "CUDAExecutionProvider" in warnings[0] and "using CPUExecutionProvider" in warnings[0]
    assert chosen["providers"] == ["CPUExecutionProvider"]
    assert bb.encode_images(_frames(4, [(64, 64)])).shape == (1, bb.embed_dim)


@pytest.mark.parametrize(
    "requested, device, available, first, warns",
    [
        ("auto", "cpu", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "CPUExecutionProvider", False),
        ("auto", "cuda", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"], "TensorrtExecutionProvider", False),
        ("auto", "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider", False),
        ("auto", "cuda", ["CPUExecutionProvider"], "CPUExecutionProvider", True),
        ("tensorrt", "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider", True),
        ("cuda", "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], "CUDAExecutionProvider", False),
        ("cpu", "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], "CPUExecutionProvider", False),
    ],
)
def test_provider_choice(requested, device, available, first, warns):
    providers, warning = choose_providers(requested, torch.device(device), available)
    assert providers[0] == first and providers[-1] == "CPUExecutionProvider"
    assert (warning is not None) == warns


@pytest.mark.slow
def test_vit_b32_onnx_matches_torch(tmp_path):
    cfg = load_config(None, ["vision.model=ViT-B-32", "vision.pretrained=random", "vision.device=cpu", "vision.backend=onnx", "vision.onnx_provider=cpu"])
    torch_bb = create_backbone(cfg.vision)
    onnx_bb = create_backbone(cfg.vision)
    use_onnx(onnx_bb, cfg.vision, threads=2, root=tmp_path)
    cos = _parity(torch_bb, onnx_bb)
    assert min(cos.values()) >= 0.999, cos


def test_auto_backend_is_onnx_for_open_clip_on_a_cpu_and_torch_when_asked(tiny_pair):
    cfg, torch_bb, _, _ = tiny_pair
    assert resolve_backend(cfg.vision.model_copy(update={"backend": "auto"}), torch_bb) == "onnx"
    assert resolve_backend(cfg.vision.model_copy(update={"backend": "torch"}), torch_bb) == "torch"
    assert load_config(None, []).vision.backend == "auto"  # the default


def test_auto_backend_falls_back_to_torch_with_one_line_when_export_fails(tiny_pair, tmp_path, monkeypatch, caplog):
    from models.factory import build_model

    cfg, *_ = tiny_pair
    monkeypatch.setenv("SENTISTREAM_CACHE", str(tmp_path))  # empty cache: build_model must export

    def broken(*_a):
        raise RuntimeError("exporter exploded\nwith a second line")

    monkeypatch.setattr(onnx_backend, "export_tower", broken)
    auto = cfg.model_copy(update={"vision": cfg.vision.model_copy(update={"backend": "auto"})})
    with caplog.at_level(logging.WARNING):
        model = build_model(auto)
    assert model.backbone.backend == "torch"
    lines = [r.getMessage() for r in caplog.records if r.name == "models.factory"]
    assert len(lines) == 1 and "\n" not in lines[0] and "stay on torch" in lines[0], lines
    assert model.backbone.encode_images(_frames(5, [(64, 64)])).shape == (1, model.backbone.embed_dim)
    # The failure is remembered: the next auto start does not pay for (or log) a second export attempt.
    monkeypatch.setattr(onnx_backend, "export_tower", lambda *a: pytest.fail("auto retried an export that failed before"))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert build_model(auto).backbone.backend == "torch"
    lines = [r.getMessage() for r in caplog.records if r.name == "models.factory"]
    assert len(lines) == 1 and "cached: delete" in lines[0], lines
    # Asked for onnx explicitly: the export is tried again, and a failure is an error, not a fallback.
    monkeypatch.setattr(onnx_backend, "export_tower", broken)
    with pytest.raises(UserError, match="exporting the .* failed"):
        build_model(cfg)


def test_int8_graphs_are_quantised_once_cached_and_close_to_fp32(tiny_pair, onnx_cache):
    cfg, torch_bb, _, _ = tiny_pair
    int8 = cfg.vision.model_copy(update={"quantize": "int8"})
    bb = create_backbone(int8)
    chosen = use_onnx(bb, int8, threads=1, root=onnx_cache)
    assert bb.backend == "onnx-int8"
    assert all(p.parent.name.endswith("-int8") and p.is_file() for p in chosen["graphs"].values())
    # Smaller on disk: int8 weights (the tiny model's embedding table stays fp32, so not 4x).
    fp32_bytes = sum(f.stat().st_size for f in (onnx_cache / graph_key(cfg.vision, torch_bb, "image")).iterdir())
    int8_bytes = sum(f.stat().st_size for f in chosen["graphs"]["image"].parent.iterdir())
    assert int8_bytes < fp32_bytes
    stamp = {t: p.stat().st_mtime_ns for t, p in chosen["graphs"].items()}
    again = use_onnx(create_backbone(int8), int8, threads=1, root=onnx_cache)
    assert again["graphs"] == chosen["graphs"] and {t: p.stat().st_mtime_ns for t, p in again["graphs"].items()} == stamp
    cos = _parity(torch_bb, bb)
    print("int8 parity vs torch fp32:", cos)
    assert min(cos.values()) >= 0.99, cos  # close, not identical: what docs/benchmarks.md reports for B/32


def test_quantize_without_onnx_says_so(caplog):
    from models.factory import build_model

    cfg = load_config(TINY_CONFIG, ["vision.backend=torch", "vision.quantize=int8"])
    with caplog.at_level(logging.WARNING):
        model = build_model(cfg)
    assert model.backbone.backend == "torch"
    assert any("vision.quantize=int8 applies to the onnx backend" in r.getMessage() for r in caplog.records)
