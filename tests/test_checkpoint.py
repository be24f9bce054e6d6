"""Fusion checkpoints: safetensors + config; every mismatch is a one-line UserError."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import CONFIG_FILE, META_FILE, WEIGHTS_FILE, load_checkpoint, read_meta, save_checkpoint
from models.errors import UserError
from models.factory import build_fusion, build_model
from models.inference import WindowInput, build_inputs
from stream.config import load_config


def _inputs(model, seed=0):
    bb = model.backbone
    gen = torch.Generator().manual_seed(seed)
    frames = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8, generator=gen)
    items = [
        WindowInput(bb.encode_images(frames), torch.tensor([1.5, 1.0, 0.5]), "a lovely surprise", 3),
        WindowInput(bb.encode_images(frames[:1]), torch.tensor([4.0]), "", 0),
    ]
    return build_inputs(items, bb.encode_texts([it.text for it in items]), bb.embed_dim, model.device)


@pytest.fixture
def saved(tmp_path, tiny_cfg, tiny_model, perturbed_fusion):
    fusion = perturbed_fusion(seed=11)
    with torch.no_grad():
        fusion.log_vars.copy_(torch.tensor([0.2, -0.1, 0.4]))
    out = save_checkpoint(tmp_path / "ckpt", fusion, tiny_cfg, tiny_model.backbone.embed_dim, extra={"epoch": 3})
    return out, fusion


def test_round_trip_identical_outputs(saved, tiny_cfg, tiny_model):
    ckpt, fusion = saved
    assert {p.name for p in ckpt.iterdir()} >= {WEIGHTS_FILE, CONFIG_FILE, META_FILE}
    fresh = copy.deepcopy(tiny_model.fusion)
    x = _inputs(tiny_model)
    with torch.no_grad():
        before = fresh(x).probs
        meta = load_checkpoint(ckpt, fresh, tiny_cfg, tiny_model.backbone.embed_dim)
        want, got = fusion(x), fresh(x)
    assert meta["epoch"] == 3 and read_meta(ckpt)["backbone"]["embed_dim"] == 64
    assert not torch.allclose(before, want.probs)  # the perturbation is visible: the test is not vacuous
    assert torch.equal(got.logits, want.logits) and torch.equal(got.probs, want.probs)
    for name, t in fusion.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], t), name


def test_build_model_loads_checkpoint(saved, tiny_cfg, tiny_model):
    ckpt, fusion = saved
    cfg = load_config(ckpt / CONFIG_FILE, [f"model.checkpoint={ckpt}"])
    model = build_model(cfg)  # also builds its own backbone: the seeded random CLIP is the same network
    assert model.checkpoint == str(ckpt) and model.weights == "random"
    x = _inputs(tiny_model)
    with torch.no_grad():
        torch.testing.assert_close(model.fusion(x).probs, fusion(x).probs, atol=1e-6, rtol=0)
    assert not model.fusion.training


def test_saved_config_loads(saved, tiny_cfg):
    ckpt, _ = saved
    cfg = load_config(ckpt / CONFIG_FILE)
    assert cfg.model_dump() == tiny_cfg.model_dump()


def test_other_backbone_name_fails(saved, tiny_cfg, tiny_model):
    ckpt, _ = saved
    cfg = load_config(None, ["vision.model=ViT-B-32"])
    fusion = copy.deepcopy(tiny_model.fusion)
    with pytest.raises(UserError, match="sentistream-tiny-test") as err:
        load_checkpoint(ckpt, fusion, cfg, 64)
    assert "ViT-B-32" in str(err.value) and "\n" not in str(err.value)


def test_other_embed_dim_fails(saved, tiny_cfg, repo_root):
    """A genuinely different backbone (embed dim 32) through build_model."""
    ckpt, _ = saved
    cfg = load_config(repo_root / "configs" / "tiny-test.yaml", [
        "vision.model=sentistream-tiny-test-32", "vision.arch.embed_dim=32", f"model.checkpoint={ckpt}",
    ])
    with pytest.raises(UserError, match=r"sentistream-tiny-test \(dim 64\).*sentistream-tiny-test-32 \(dim 32\)"):
        build_model(cfg)


def test_other_layers_fails(saved, tiny_cfg, tiny_model):
    ckpt, _ = saved
    cfg = tiny_cfg.model_copy(update={"model": tiny_cfg.model.model_copy(update={"layers": 2})})
    fusion = build_fusion(tiny_model.backbone, cfg)
    with pytest.raises(UserError, match=r"model\.layers"):
        load_checkpoint(ckpt, fusion, cfg, 64)


def test_tampered_tensor_shape_fails_naming_it(saved, tiny_cfg, tiny_model):
    ckpt, _ = saved
    tensors = load_file(str(ckpt / WEIGHTS_FILE))
    tensors["image_head.weight"] = torch.zeros(3, 65)
    save_file(tensors, str(ckpt / WEIGHTS_FILE))
    fusion = copy.deepcopy(tiny_model.fusion)
    with pytest.raises(UserError, match=r"image_head\.weight"):
        load_checkpoint(ckpt, fusion, tiny_cfg, 64)


def test_missing_tensor_fails_naming_it(saved, tiny_cfg, tiny_model):
    ckpt, _ = saved
    tensors = load_file(str(ckpt / WEIGHTS_FILE))
    del tensors["log_vars"]
    save_file(tensors, str(ckpt / WEIGHTS_FILE))
    with pytest.raises(UserError, match="log_vars"):
        load_checkpoint(ckpt, copy.deepcopy(tiny_model.fusion), tiny_cfg, 64)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_unreadable_weights_fail_cleanly(saved, tiny_cfg, tiny_model, damage):
    ckpt, _ = saved
    path = ckpt / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: len(data) // 2], "garbage": b"\x00garbage" * 50, "empty": b""}[damage])
    with pytest.raises(UserError, match=WEIGHTS_FILE) as err:
        load_checkpoint(ckpt, copy.deepcopy(tiny_model.fusion), tiny_cfg, 64)
    assert "\n" not in str(err.value)


def test_missing_meta_fails(saved, tiny_cfg, tiny_model, tmp_path):
    ckpt, _ = saved
    (ckpt / META_FILE).unlink()
    with pytest.raises(UserError, match=META_FILE):
        load_checkpoint(ckpt, copy.deepcopy(tiny_model.fusion), tiny_cfg, 64)
    with pytest.raises(UserError, match="not found"):
        read_meta(tmp_path / "nowhere")


def test_bad_meta_fails(saved, tiny_cfg, tiny_model):
    ckpt, _ = saved
    (ckpt / META_FILE).write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        read_meta(ckpt)
    (ckpt / META_FILE).write_text(json.dumps({"format": "something-else/9"}))
    with pytest.raises(UserError, match="format"):
        load_checkpoint(ckpt, copy.deepcopy(tiny_model.fusion), tiny_cfg, 64)


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(backbone=["ViT"]), "'backbone' must be an object"),
    (lambda m: m["backbone"].update(embed_dim="64"), "'backbone.embed_dim' must be an integer"),
    (lambda m: m["backbone"].update(embed_dim=True), "'backbone.embed_dim' must be an integer"),
    (lambda m: m["backbone"].update(model=5), "'backbone.model' must be a string"),
    (lambda m: m.update(fusion=None), "'fusion' must be an object"),
    (lambda m: m["fusion"].update(heads=[2]), "'fusion.heads' must be an integer"),
    (lambda m: m["fusion"].update(uncertainty="yes"), "'fusion.uncertainty' must be true or false"),
])
def test_meta_fields_of_the_wrong_json_type_fail_in_one_line(saved, tiny_cfg, tiny_model, change, field):
    ckpt, _ = saved
    meta = json.loads((ckpt / META_FILE).read_text())
    change(meta)
    (ckpt / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(UserError, match=f"{META_FILE}: {field}") as err:
        load_checkpoint(ckpt, copy.deepcopy(tiny_model.fusion), tiny_cfg, 64)
    assert "\n" not in str(err.value)
