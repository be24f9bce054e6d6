"""Backbones for every device: transformers checkpoints (CLIP, SigLIP) behind the backbone
interface, parity with open_clip, towers' own preprocessing / tokenizer / pooling / logit bias,
MobileCLIP reparameterisation, and the presets. No downloads: tiny random towers are saved with
`save_pretrained` (tests/hf_towers.py); presets use `vision.pretrained=random`."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_towers import SIGLIP_CONTEXT, clip_from_open_clip, save_tiny_clip, save_tiny_siglip

from models.backbone import TextTokenizer, create_backbone
from models.factory import ZeroShot, build_fusion
from models.training import feature_cache
from models.training.data import load_dataset
from models.training.feature_cache import feature_key, load_features
from stream import cli
from stream.config import load_config

ROOT = Path(__file__).parent.parent
TINY = ROOT / "configs" / "tiny-test.yaml"
# A transformers checkpoint brings its own architecture; any pretrained value but `random` loads its weights.
HF = ["vision.arch=null", "vision.pretrained=checkpoint", "vision.device=cpu"]


@pytest.fixture(scope="module")
def towers(tmp_path_factory, tiny_model):
    """The tiny test CLIP's own weights as a transformers CLIPModel, and a tiny SiglipModel."""
    root = tmp_path_factory.mktemp("hf")
    return {
        "clip": save_tiny_clip(root / "clip", clip_from_open_clip(tiny_model.backbone.clip)),
        "siglip": save_tiny_siglip(root / "siglip"),
    }


def hf_cfg(path: Path, *extra: str):
    return load_config(TINY, [f"vision.model=hf:{path}", *HF, *extra])


def _frames(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------- tokenizer
def test_tokenizer_layout_clip_siglip_and_no_closing_token():
    enc = {"good day": [7, 8], "bad": [9]}.get
    clip = TextTokenizer(lambda t: enc(t) or [], [100], [101], 0, 6, "eot")
    rows = clip(["good day", ""])
    assert rows.tolist() == [[100, 7, 8, 101, 0, 0], [100, 101, 0, 0, 0, 0]]
    mask, pooled = clip.layout(rows)
    assert pooled.tolist() == [3, 1] and mask.int().tolist() == [[1, 1, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]]
    # SigLIP: no leading token, </s> closes and also pads; pooled at the last position, always in the mask
    siglip = TextTokenizer(lambda t: enc(t) or [], [], [1], 1, 6, "last")
    rows = siglip(["good day", "bad"])
    assert rows.tolist() == [[7, 8, 1, 1, 1, 1], [9, 1, 1, 1, 1, 1]]
    mask, pooled = siglip.layout(rows)
    assert pooled.tolist() == [5, 5] and mask.int().tolist() == [[1, 1, 1, 0, 0, 1], [1, 1, 0, 0, 0, 1]]
    # a tokenizer that adds only a leading token: the sequence ends at the last non-padding id
    bos = TextTokenizer(lambda t: enc(t) or [], [2], [], 0, 5, "eot")
    mask, pooled = bos.layout(bos(["good day"]))
    assert pooled.tolist() == [2] and mask.int().tolist() == [[1, 1, 1, 0, 0]]
    # a long text keeps its latest ids, within the room the specials leave
    words = {"good": 7, "day": 8, "bad": 9}
    long = TextTokenizer(lambda t: [words[w] for w in t.split()], [100], [101], 0, 4, "eot")
    assert long(["good day bad"]).tolist() == [[100, 8, 9, 101]]
    assert long(["good day bad"], max_tokens=1).tolist() == [[100, 9, 101, 0]]


# ---------------------------------------------------------------------------------------- parity
def test_transformers_clip_matches_open_clip(towers, tiny_model):
    """The tiny CLIP's weights converted to a transformers CLIPModel: both loaders agree on
    preprocessing (size, crop, normalisation), tokenization, pooling and projections."""
    oc = tiny_model.backbone
    hf = create_backbone(hf_cfg(towers["clip"]).vision)
    assert type(hf).__name__ == "HfBackbone" and hf.weights == "pretrained"
    assert (hf.embed_dim, hf.image_size, hf.context_length) == (oc.embed_dim, oc.image_size, oc.context_length)
    assert hf.image_cfg == oc.image_cfg and hf.logit_bias is None
    assert hf.logit_scale == pytest.approx(oc.logit_scale)
    for i, (h, w) in enumerate([(240, 320), (97, 61), (64, 64)]):
        frames = _frames(3, h, w, seed=i)
        cos = F.cosine_similarity(oc.encode_images(frames), hf.encode_images(frames))
        assert cos.min() >= 0.999, (h, w, cos)
    texts = ["What a wonderful, happy day!", "", "i hate this so much", " ".join(["word"] * 120)]
    a, b = oc.encode_texts(texts), hf.encode_texts(texts)
    assert torch.equal(a.mask, b.mask) and torch.equal(a.pooled_index, b.pooled_index)
    assert torch.equal(oc.tokenize(texts)[a.mask], hf.tokenize(texts)[b.mask])  # same ids (padding differs)
    assert F.cosine_similarity(a.states[a.mask], b.states[b.mask]).min() >= 0.999
    assert F.cosine_similarity(oc.encode_prompts(texts), hf.encode_prompts(texts)).min() >= 0.999
    za, zb = ZeroShot.of(oc), ZeroShot.of(hf)
    assert F.cosine_similarity(za.prompts, zb.prompts).min() >= 0.999 and zb.logit_bias == 0.0


def test_auto_backend_keeps_transformers_towers_on_torch(towers):
    from models.onnx_backend import resolve_backend

    cfg = hf_cfg(towers["clip"])
    assert cfg.vision.backend == "auto"
    assert resolve_backend(cfg.vision, create_backbone(cfg.vision)) == "torch"  # onnx exports open_clip towers only


def test_siglip_checkpoint_brings_its_own_preprocessing_tokenizer_pooling_and_bias(towers, tiny_cfg):
    bb = create_backbone(hf_cfg(towers["siglip"]).vision)
    assert bb.image_cfg.resize_mode == "squash" and bb.image_cfg.mean == (0.5, 0.5, 0.5) and bb.image_size == (64, 64)
    assert bb.context_length == SIGLIP_CONTEXT and bb.tokenizer.pool == "last"
    assert bb.logit_bias == pytest.approx(-10.0) and bb.logit_scale == pytest.approx(10.0)
    rows = bb.tokenize(["Hello World", ""])
    assert rows.shape == (2, SIGLIP_CONTEXT) and bb.tokenizer.prefix == [] and bb.eot == bb.tokenizer.pad_id == 1
    ts = bb.encode_text_tokens(rows)
    assert ts.pooled_index.tolist() == [SIGLIP_CONTEXT - 1] * 2 and ts.mask[:, -1].all()
    assert ts.mask[1].sum() == 2  # empty text: </s> + the pooling position
    # squash: a frame is resized whole, so its left edge stays at the left edge
    frame = torch.zeros(1, 64, 256, 3, dtype=torch.uint8)
    frame[:, :, :64] = 255
    x = bb.preprocess(frame)[0]
    assert x[:, :, :12].min() > 0.9 and x[:, :, 20:].max() < -0.9
    # zero-shot heads: logits are SigLIP's pair logits (scale * cos + bias), probabilities a softmax
    # over the classes, where the shared bias cancels
    fusion = build_fusion(bb, tiny_cfg)
    assert torch.allclose(fusion.image_head.bias, torch.full((3,), -10.0))
    emb = bb.encode_images(_frames(1, 64, 64))
    cos = F.normalize(emb, dim=-1) @ F.normalize(ZeroShot.of(bb).prompts, dim=-1).T
    logits = fusion.image_head(F.normalize(emb, dim=-1))
    torch.testing.assert_close(logits, 10.0 * cos - 10.0, atol=1e-4, rtol=0)
    torch.testing.assert_close(logits.softmax(-1), (10.0 * cos).softmax(-1), atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------- errors and caching
@pytest.mark.parametrize("spec, code, needle", [
    ("hf:/nonexistent/tower", 3, "not found or has no config.json"),
    ("hf:sentistream-test/not-a-cached-model", 3, "could not be loaded"),
    ("hf:", 2, "needs a directory or hub id"),
])
def test_unavailable_transformers_checkpoint_is_one_line(spec, code, needle, capsys, tmp_path):
    assert cli.main(["run", "--source", "demo", "--config", str(TINY), "--set", f"vision.model={spec}",
                     *[a for kv in HF for a in ("--set", kv)]]) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and needle in err and len(err.splitlines()) == 1, err


def test_local_transformers_dir_is_detected_and_feature_key_follows_its_files(towers, tmp_path):
    bare = load_config(TINY, [f"vision.model={towers['siglip']}", *HF])
    assert create_backbone(bare.vision).tokenizer.pool == "last"  # no hf: prefix needed for a local dir
    copy = tmp_path / "siglip"
    copy.mkdir()
    for f in towers["siglip"].iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "a", "text": "good", "label": "positive"}) + "\n")
    cfg, ds = hf_cfg(copy), load_dataset(data)
    before = feature_key(cfg, ds, torch.float32)
    os.utime(copy / "model.safetensors", ns=(1, 1))  # re-saved weights at the same path
    assert feature_key(cfg, ds, torch.float32) != before


# ------------------------------------------------------------------------------ MobileCLIP reparam
@pytest.mark.slow  # builds MobileCLIP2-S0 twice (about a minute on a busy 2-core host)
def test_mobileclip_is_reparameterised_at_load_with_the_same_outputs():
    import open_clip

    cfg = load_config(None, ["vision.model=MobileCLIP2-S0", "vision.pretrained=random", "vision.device=cpu"])
    bb = create_backbone(cfg.vision)
    assert bb.reparameterized > 0
    branches = [m for m in bb.clip.visual.modules() if hasattr(m, "reparam_conv")]
    assert branches and all(m.reparam_conv is not None for m in branches)
    assert not any(hasattr(m, "rbr_conv") or hasattr(m, "conv_kxk") for m in branches)
    with torch.random.fork_rng(devices=[]):  # the same seeded random network, not reparameterised
        torch.manual_seed(0)
        ref = open_clip.create_model("MobileCLIP2-S0", pretrained=None, pretrained_text=False).eval()
    assert any(getattr(m, "reparam_conv", 0) is None for m in ref.visual.modules())
    x = bb.preprocess(_frames(2, 240, 320))
    with torch.inference_mode():
        want = ref.encode_image(x)
    got = bb.encode_pixels(x)
    assert F.cosine_similarity(got, want).min() > 0.9999
    torch.testing.assert_close(got, want, atol=1e-3 * float(want.abs().max()), rtol=1e-3)


# ------------------------------------------------------------------------------------------ presets
PRESETS = {  # what each preset's tower must bring: size, mean, resize mode, context, pooling, bias, width, resize
    "edge.yaml": ((256, 256), (0.0, 0.0, 0.0), "shortest", 77, "eot", False, 512, "bilinear"),
    "default.yaml": ((224, 224), (0.48145466, 0.4578275, 0.40821073), "shortest", 77, "eot", False, 512, "bicubic"),
    "quality.yaml": ((256, 256), (0.5, 0.5, 0.5), "squash", 64, "last", True, 768, "bicubic"),
}


@pytest.mark.slow
@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_builds_with_random_weights_and_everything_comes_from_the_tower(preset):
    cfg = load_config(ROOT / "configs" / preset, ["vision.pretrained=random", "vision.device=cpu"])
    bb = create_backbone(cfg.vision)
    size, mean, mode, context, pool, bias, dim, interpolation = PRESETS[preset]
    assert (bb.image_size, bb.image_cfg.mean, bb.image_cfg.resize_mode) == (size, mean, mode)
    assert bb.image_cfg.interpolation == interpolation  # the published preprocess config's
    assert (bb.context_length, bb.tokenizer.pool, bb.logit_bias is not None, bb.embed_dim) == (context, pool, bias, dim)
    emb = bb.encode_images(_frames(2, 480, 640))
    ts = bb.encode_texts(["what a lovely day", ""], cfg.window.max_text_tokens)
    assert emb.shape == (2, dim) and ts.states.shape == (2, context, dim) and torch.isfinite(emb).all()
    fusion = build_fusion(bb, cfg)
    assert torch.allclose(fusion.text_head.bias, torch.full((3,), bb.logit_bias or 0.0))


# ---------------------------------------------------------------------------- run and train on them
def _events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_run_on_the_demo_with_a_transformers_tower(family, towers, tmp_path):
    out = tmp_path / "events.jsonl"
    args = ["--source", "demo", "--config", str(TINY), "--output", str(out), "--set", f"vision.model=hf:{towers[family]}",
            *[a for kv in HF for a in ("--set", kv)]]
    res = subprocess.run([sys.executable, "-m", "stream.cli", "run", *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    events = _events(out)
    sentiment = [e for e in events if e["type"] == "sentiment"]
    assert sentiment and events[-1]["type"] == "summary" and any(e["type"] == "transcript" for e in events)
    for e in sentiment:
        assert abs(sum(e["probs"].values()) - 1) < 1e-4 and np.isfinite(e["score"])
    assert any(e["modalities"]["text"]["weight"] > 0 for e in sentiment)  # the transformers text tower was used
    assert any(e["modalities"]["image"]["weight"] > 0 for e in sentiment)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["clip", "siglip"])
def test_train_on_the_synthetic_task_with_a_transformers_tower(family, towers, tmp_path, monkeypatch):
    from test_train import build_synthetic

    monkeypatch.setenv("SENTISTREAM_CACHE", str(tmp_path / "cache"))
    data = build_synthetic(tmp_path / "data", n=120)
    sets = [*HF, f"vision.model=hf:{towers[family]}", "engine.threads=1", "train.lr=0.01", "train.epochs=30", "train.patience=10"]
    out = tmp_path / "ckpt"
    assert cli.main(["train", "--data", str(data), "--out", str(out), "--config", str(TINY), *[a for kv in sets for a in ("--set", kv)]]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backbone"] == {"model": f"hf:{towers[family]}", "pretrained": "checkpoint", "embed_dim": 64}
    features = load_features(load_config(TINY, sets), load_dataset(data), progress=False)
    assert features.logit_bias == pytest.approx(-10.0 if family == "siglip" else 0.0)
    if family == "siglip":  # SigLIP pools the last position: the cached text keeps the full context
        assert features.text.shape[1] == SIGLIP_CONTEXT and features.text_pool.eq(SIGLIP_CONTEXT - 1).all()
    assert feature_cache.cache_root().is_dir()
    valid = meta.get("valid") or meta.get("best", {})
    assert valid  # the run wrote its validation metrics


def test_engine_text_cache_follows_the_tower_and_the_token_budget(towers, tiny_cfg):
    from models.factory import build_model
    from stream.engine import TextStateCache

    model = build_model(hf_cfg(towers["siglip"]))
    cache = TextStateCache(capacity=8)
    text = "love great wonderful happy excellent amazing fantastic delightful"
    full = cache.encode(model, [text, text], 75, None)
    assert cache.misses == 1 and cache.hits == 1  # one encode for the repeated text
    assert full.states.shape == (2, SIGLIP_CONTEXT, 64) and full.pooled_index.tolist() == [SIGLIP_CONTEXT - 1] * 2
    short = cache.encode(model, [text], 3, None)
    assert cache.misses == 2  # another budget is another entry, not the cached full-length states
    assert int(short.mask[0].sum()) == 3 + 1 + 1 < int(full.mask[0].sum())  # 3 ids + </s> + the pooling position


# ---------------------------------------------------------------------------------- the benchmark
def _bench(tmp_path: Path, *extra: str) -> dict:
    out = tmp_path / "presets.json"
    res = subprocess.run([sys.executable, "scripts/bench_presets.py", "--presets", "tiny-test", "--seconds", "0.2", "--json", str(out), *extra],
                         capture_output=True, text=True, timeout=1200, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    backends = 3 if "--backends" not in extra else len(extra[extra.index("--backends") + 1].split(","))
    assert out.with_suffix(".md").read_text().count("| tiny-test |") == backends + (1 if "--full" in extra else 0)
    return json.loads(out.read_text())


@pytest.mark.slow  # a fresh interpreter per preset (~1 min on a busy 2-core host)
def test_bench_presets_measures_a_preset(tmp_path):
    rows = _bench(tmp_path)["towers"]
    assert [r["backend"] for r in rows] == ["torch", "onnx", "onnx-int8"]  # each backend of the tower, one process each
    for row in rows:
        assert row["model"] == "sentistream-tiny-test" and row["embed_dim"] == 64
        assert row["image_ms_per_frame_b1"] > 0 and row["image_ms_per_frame_b4"] > 0 and row["text_ms"] > 0 and row["peak_rss_mb"] > 0
    assert rows[0]["parity_vs_torch"] is None
    assert rows[1]["parity_vs_torch"]["image_min_cos"] >= 0.999 and rows[1]["parity_vs_torch"]["text_token_min_cos"] >= 0.999
    assert rows[2]["parity_vs_torch"]["image_min_cos"] >= 0.99  # int8: close, not identical


@pytest.mark.slow
def test_bench_presets_full_profiles_the_pipeline(tmp_path):
    pipe = _bench(tmp_path, "--full", "--backends", "torch")["pipeline"]["tiny-test"]
    assert pipe["file"]["realtime_factor"] > 0 and pipe["paced"]["frame_to_estimate_p95_ms"] > 0
