"""Training and evaluation: feature cache, CLI end to end, the acceptance task, ablations, resume.

The acceptance task needs both modalities: the picture says whether there is any sentiment (a bright
colour pattern vs a flat grey image), the text says which way (positive vs negative words); the
label is neutral for a grey picture, else the text's polarity. Alone, each modality can be right on
about 2/3 of the samples at best; together, on all of them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from models.errors import UserError
from models.training import feature_cache as features_mod
from models.training.data import load_dataset
from models.training.feature_cache import load_features
from models.training.loop import read_log, train_fusion
from models.training.metrics import classification_metrics, confusion_matrix
from scripts.media import make_video, require_tools
from stream import cli
from stream.config import load_config

POSITIVE = ["love", "great", "wonderful", "happy", "excellent", "amazing", "fantastic", "delightful"]
NEGATIVE = ["hate", "awful", "terrible", "sad", "horrible", "disgusting", "miserable", "dreadful"]
FILLER = ["the", "movie", "today", "really", "was", "this", "so", "day", "food", "trip"]
# engine.threads=1: the fusion's small ops only lose from more threads on a shared 2-core machine.
# The recipe (lr, epochs, patience) lets every variant, the single-modality ones too, converge.
RECIPE = ["engine.threads=1", "train.lr=0.01", "train.epochs=80", "train.patience=15"]
TINY_CONFIG = Path(__file__).parent.parent / "configs" / "tiny-test.yaml"


@pytest.fixture(scope="module", autouse=True)
def feature_cache(tmp_path_factory):
    """A private feature cache for this module (never the user's ~/.cache)."""
    old = os.environ.get("SENTISTREAM_CACHE")
    os.environ["SENTISTREAM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield Path(os.environ["SENTISTREAM_CACHE"])
    if old is None:
        os.environ.pop("SENTISTREAM_CACHE", None)
    else:
        os.environ["SENTISTREAM_CACHE"] = old


# ------------------------------------------------------------------------------------ synthetic task
def picture(rng: np.random.Generator, sentiment: bool) -> np.ndarray:
    """Flat grey (no sentiment) or a saturated two-colour check/stripe pattern (sentiment)."""
    if not sentiment:
        return np.full((64, 64, 3), rng.integers(100, 156), np.uint8)
    c1, c2 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    c1[rng.integers(3)], c2[rng.integers(3)] = 255, 0
    yy, xx = np.mgrid[:64, :64]
    period = int(rng.integers(4, 17))
    mask = ((xx // period + yy // period) % 2 == 0) if rng.random() < 0.5 else (xx // period) % 2 == 0
    return np.where(mask[..., None], c1, c2).astype(np.uint8)


def sentence(rng: np.random.Generator, positive: bool) -> str:
    words = list(rng.choice(POSITIVE if positive else NEGATIVE, 3, replace=False)) + [str(rng.choice(FILLER))]
    rng.shuffle(words)
    return " ".join(words)


def build_synthetic(root: Path, n: int = 360, seed: int = 0) -> Path:
    """n samples, 1/3 grey (neutral); splits 2/3 train, 1/6 valid, 1/6 test."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        sentiment, positive = i % 3 != 0, bool(rng.random() < 0.5)
        Image.fromarray(picture(rng, sentiment)).save(root / "img" / f"{i}.png")
        label = "neutral" if not sentiment else ("positive" if positive else "negative")
        block = (i // 3) % 6
        split = "train" if block < 4 else ("valid" if block == 4 else "test")
        rows.append({"id": f"s{i}", "image": f"img/{i}.png", "text": sentence(rng, positive), "label": label, "split": split})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "data.jsonl"


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory) -> Path:
    return build_synthetic(tmp_path_factory.mktemp("synthetic"))


@pytest.fixture(scope="module")
def tiny_fast():
    return load_config(TINY_CONFIG, RECIPE)


@pytest.fixture(scope="module")
def synthetic_features(synthetic, tiny_fast):
    return load_features(tiny_fast, load_dataset(synthetic), progress=False)


@pytest.fixture(scope="module")
def trained(synthetic, tmp_path_factory):
    """`sentistream train` on the synthetic task, through the CLI."""
    out = tmp_path_factory.mktemp("run") / "ckpt"
    overrides = [arg for kv in RECIPE for arg in ("--set", kv)]
    assert cli.main(["train", "--data", str(synthetic), "--out", str(out), "--config", str(TINY_CONFIG), *overrides]) == 0
    return out


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_match_hand_computed_values():
    y_true, y_pred = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    m = classification_metrics(y_true, y_pred)
    # per class F1: neg 2*(.5*.5)/1 = .5, neu 2*(.5*1)/1.5 = 2/3, pos 2*(1*2/3)/(5/3) = .8
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["macro_f1"] == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert m["weighted_f1"] == pytest.approx((2 * 0.5 + 1 * 2 / 3 + 3 * 0.8) / 6)
    assert confusion_matrix(y_true, y_pred).tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 2]]
    assert classification_metrics(np.array([2, 2]), np.array([2, 2]))["macro_f1"] == 1.0  # absent classes ignored


# ----------------------------------------------------------------------------------------- features
def test_feature_cache_is_reused_and_keyed(synthetic, tiny_fast, synthetic_features, monkeypatch):
    f = synthetic_features
    assert f.image.shape[:2] == (360, tiny_fast.train.frames_per_video) and f.embed_dim == 64
    assert f.image_mask.sum(1).eq(1).all() and f.text_mask.any(1).all()
    monkeypatch.setattr(features_mod, "create_backbone", lambda *_: pytest.fail("cache miss: backbone created"))
    again = load_features(tiny_fast, load_dataset(synthetic), progress=False)
    assert again.key == f.key and torch.equal(again.text, f.text)
    other = load_config(TINY_CONFIG, [*RECIPE, "sampler.fps=4"])
    assert features_mod.feature_key(other, load_dataset(synthetic), torch.float32) != f.key


def test_video_samples_are_framed_like_the_live_sampler(tmp_path, tiny_fast):
    require_tools("ffmpeg")
    make_video(tmp_path / "v.mp4", 3.0, size=(64, 48), fps=10, pattern="testsrc2")
    rows = [{"id": "v", "video": "v.mp4", "text": "great day", "label": "positive", "split": "train"},
            {"id": "t", "text": "", "video": "v.mp4", "label": "neutral", "split": "valid"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ds = load_dataset(tmp_path / "m.jsonl")
    frames, ages = features_mod.read_video(ds.samples[0], fps=2.0, max_frames=4)
    assert frames.shape == (4, 48, 64, 3)  # 2 fps over 3 s -> 6 kept, 4 evenly spaced
    assert np.all(np.diff(ages) < 0) and ages[-1] == pytest.approx(0.4, abs=0.11) and ages[0] == pytest.approx(2.9, abs=0.11)
    f = load_features(tiny_fast, ds, progress=False)
    assert f.image_mask.sum(1).tolist() == [4, 4]
    assert f.text_mask[1].any().item() is False  # empty text = missing modality


def test_unreadable_image_names_the_line(tmp_path, tiny_fast):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    rows = [{"id": "1", "image": "bad.png", "text": "x", "label": "positive", "split": "train"}]
    (tmp_path / "m.jsonl").write_text(json.dumps(rows[0]) + "\n")
    with pytest.raises(UserError, match=r"m\.jsonl:1: cannot read image .*bad\.png"):
        load_features(tiny_fast, load_dataset(tmp_path / "m.jsonl"), progress=False)


# ------------------------------------------------------------------------------------ CLI + acceptance
def test_train_writes_a_checkpoint_directory(trained):
    for name in ("model.safetensors", "config.yaml", "meta.json", "train_log.jsonl", "curves.png", "confusion.png", "state.json"):
        assert (trained / name).is_file(), name
    meta = json.loads((trained / "meta.json").read_text())
    rows = read_log(trained)
    assert rows and rows[-1]["epoch"] == meta["epochs_run"] and 1 <= meta["epoch"] <= meta["epochs_run"]
    assert {"train_loss", "valid_accuracy", "valid_weighted_f1", "log_vars"} <= set(rows[0])
    assert meta["test"]["accuracy"] >= 0.9 and meta["layout"] == "manifest"
    assert (trained / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_acceptance_full_model_beats_single_modalities(trained, synthetic, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    code = cli.main(["evaluate", "--checkpoint", str(trained), "--data", str(synthetic), "--ablations", "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert set(report) == {"fused", "image", "text", "ablations"}
    assert set(report["ablations"]) == {"no_cross_attention", "no_uncertainty", "image_only", "text_only", "no_experts"}
    for m in [report["fused"], report["image"], report["text"], *report["ablations"].values()]:
        assert set(m) == {"accuracy", "weighted_f1", "macro_f1"} and all(0.0 <= v <= 1.0 for v in m.values())
    full = report["fused"]["accuracy"]
    single = max(report["ablations"]["image_only"]["accuracy"], report["ablations"]["text_only"]["accuracy"])
    print(f"\nfull {full:.3f}, image-only {report['ablations']['image_only']['accuracy']:.3f}, "
          f"text-only {report['ablations']['text_only']['accuracy']:.3f}")
    assert full >= single + 0.20, report
    for name in ("full model (fused)", "no_cross_attention", "no_uncertainty", "image_only", "text_only"):
        assert name in table
    assert (trained / "ablations" / "image_only" / "model.safetensors").is_file()


def test_evaluate_without_ablations(trained, synthetic, tmp_path):
    out = tmp_path / "m.json"
    assert cli.main(["evaluate", "--checkpoint", str(trained), "--data", str(synthetic), "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["ablations"] == {} and report["fused"]["accuracy"] >= 0.9


def test_trained_checkpoint_changes_the_estimates(trained, tiny_fast):
    from models.factory import build_model
    from models.inference import WindowInput, predict

    untrained = build_model(tiny_fast)
    loaded = build_model(load_config(TINY_CONFIG, [*RECIPE, f"model.checkpoint={trained}"]), backbone=untrained.backbone)
    rng = np.random.default_rng(123)
    images = [picture(rng, True), picture(rng, False), picture(rng, True)]
    texts = ["love wonderful great day", "hate awful sad movie", "terrible horrible dreadful trip"]
    emb = untrained.backbone.encode_images(np.stack(images)).cpu()
    items = [WindowInput(image=emb[i : i + 1], image_age=torch.zeros(1), text=t, n_words=4) for i, t in enumerate(texts)]
    states = untrained.backbone.encode_texts(texts)
    before, after = predict(untrained, items, states), predict(loaded, items, states)
    assert [e.label for e in after] == ["positive", "neutral", "negative"]
    for b, a in zip(before, after):
        assert max(abs(b.probs[k] - a.probs[k]) for k in b.probs) > 0.1


# ------------------------------------------------------------------------------------------- resume
def test_resume_continues_from_the_saved_epoch(synthetic_features, tiny_fast, tmp_path, monkeypatch):
    import models.training.loop as train_mod

    cfg = tiny_fast.model_copy(deep=True)
    cfg.train.patience, cfg.train.epochs = 50, 6
    real_epoch = train_mod._train_epoch

    def interrupted(*args):
        if args[5] == 3:  # Ctrl-C during epoch 3
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(train_mod, "_train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_fusion(cfg, synthetic_features, tmp_path / "resumed")
    assert json.loads((tmp_path / "resumed" / "state.json").read_text())["epoch"] == 2
    monkeypatch.setattr(train_mod, "_train_epoch", real_epoch)
    resumed = train_fusion(cfg, synthetic_features, tmp_path / "resumed")
    assert resumed.resumed_from == 2 and resumed.epochs_run == 6 and resumed.stop_reason == "max_epochs"
    assert [r["epoch"] for r in read_log(tmp_path / "resumed")] == [1, 2, 3, 4, 5, 6]
    straight = train_fusion(cfg, synthetic_features, tmp_path / "straight")
    # Seeded per epoch + optimizer moments restored: the resumed run is the uninterrupted run.
    for k, v in straight.fusion.state_dict().items():
        assert torch.allclose(v, resumed.fusion.state_dict()[k], atol=1e-4), k
    assert read_log(tmp_path / "straight")[-1]["valid_nll"] == pytest.approx(read_log(tmp_path / "resumed")[-1]["valid_nll"], abs=1e-4)
    # More epochs later: training goes on from epoch 6; the same epochs again: nothing more to do.
    assert train_fusion(cfg, synthetic_features, tmp_path / "resumed").epochs_run == 6
    cfg.train.epochs = 8
    more = train_fusion(cfg, synthetic_features, tmp_path / "resumed")
    assert (more.resumed_from, more.epochs_run) == (6, 8)
    cfg.train.lr = 0.5
    with pytest.raises(UserError, match="holds a training run with another config or data"):
        train_fusion(cfg, synthetic_features, tmp_path / "resumed")


def test_evaluate_rejects_bad_checkpoint_and_missing_test_split(trained, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = cli.main(["evaluate", "--checkpoint", str(tmp_path / "empty"), "--data", str(tmp_path)])
    assert code == 2 and "is not a sentistream checkpoint" in capsys.readouterr().err
    Image.fromarray(picture(np.random.default_rng(0), True)).save(tmp_path / "x.png")
    row = {"id": "1", "image": "x.png", "text": "love it", "label": "positive", "split": "train"}
    (tmp_path / "m.jsonl").write_text(json.dumps(row) + "\n")
    code = cli.main(["evaluate", "--checkpoint", str(trained), "--data", str(tmp_path / "m.jsonl")])
    assert code == 2 and "split 'test' has no samples" in capsys.readouterr().err


def test_training_with_an_expert_caches_its_readings_learns_its_precision_and_scores_it(synthetic, tmp_path):
    """experts.text=lexicon: its readings go into the feature cache (every sample has words), training moves
    its log-variance, and score_model reports its head; the experts that were off are absent."""
    from models.experts import EXPERTS
    from models.training.metrics import score_model

    cfg = load_config(TINY_CONFIG, [*RECIPE, "experts.text=lexicon", "experts.sentence=none", "experts.face=none"])
    feats = load_features(cfg, load_dataset(synthetic), progress=False)
    j = EXPERTS.index("lexicon")
    off = [EXPERTS.index("sentence"), EXPERTS.index("expression")]
    assert feats.experts_mask[:, j].all() and not feats.experts_mask[:, off].any()
    result = train_fusion(cfg, feats, tmp_path / "run", threads=1)
    assert len(read_log(tmp_path / "run")[0]["log_vars"]) == 3 + len(EXPERTS)
    assert abs(float(result.fusion.expert_log_vars[j].detach())) > 1e-3
    scores = score_model(result.fusion, feats, "test", torch.device("cpu"))
    assert "lexicon" in scores and "sentence" not in scores and "expression" not in scores
    print("lexicon head on the synthetic test split:", scores["lexicon"], "s =", float(result.fusion.expert_log_vars[j].detach()))
    assert scores["lexicon"]["accuracy"] > 0.5  # it reads the polar words; neutral (grey pictures) it cannot tell
