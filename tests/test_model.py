"""CLIP-CA-MSA on the tiny random CLIP: shapes, masks, zero-shot equivalence, missing modalities,
uncertainty weighting and the estimates `predict` returns."""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from models.fusion import FUSED, IMAGE, TEXT, ClipCaMsa, FusionInputs
from models.inference import WindowInput, build_inputs, predict
from models.prompts import LABELS, PROMPTS
from models.uncertainty import head_weights, uncertainty_loss
from stream.config import FusionConfig


def _frames(n: int, h: int = 64, w: int = 64, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, h, w, 3), dtype=torch.uint8, generator=gen)


def _window(backbone, n_frames: int, text: str, seed: int = 0) -> WindowInput:
    emb = backbone.encode_images(_frames(n_frames, seed=seed)) if n_frames else torch.zeros(0, backbone.embed_dim)
    age = torch.arange(n_frames, 0, -1, dtype=torch.float32) * 0.5
    return WindowInput(image=emb.cpu(), image_age=age, text=text, n_words=len(text.split()))


def _inputs(model, items, texts=None):
    """FusionInputs for `items`; `texts` (default: the items' own) are what the text states encode."""
    texts = [it.text for it in items] if texts is None else texts
    states = model.backbone.encode_texts(texts)
    return build_inputs(items, states, model.backbone.embed_dim, model.device)


def _hand_prompt_matrix(backbone) -> torch.Tensor:
    rows = [F.normalize(backbone.encode_prompts(list(PROMPTS[label])), dim=-1).mean(0) for label in LABELS]
    return F.normalize(torch.stack(rows), dim=-1)


# ---------------------------------------------------------------- backbone shapes and masks


def test_image_features_shape_and_batch_independence(tiny_model):
    bb = tiny_model.backbone
    frames = _frames(3)
    feats = bb.encode_images(frames)
    assert feats.shape == (3, bb.embed_dim) == (3, 64)
    assert feats.dtype == torch.float32 and torch.isfinite(feats).all()
    # Each frame's features do not depend on the rest of the batch; numpy input gives the same.
    single = bb.encode_images(frames[1:2])
    torch.testing.assert_close(feats[1:2], single, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(bb.encode_images(frames.numpy()), feats, atol=0, rtol=0)
    assert not torch.allclose(feats[0], feats[1])


@pytest.mark.parametrize("hw", [(240, 320), (97, 61), (64, 64), (17, 300)])
def test_preprocess_any_size(tiny_model, hw):
    bb = tiny_model.backbone
    h, w = hw
    frames = _frames(2, h, w, seed=h)
    x = bb.preprocess(frames)
    assert isinstance(x, torch.Tensor)
    assert x.shape == (2, 3, *bb.image_size) == (2, 3, 64, 64)
    assert bb.encode_images(frames).shape == (2, bb.embed_dim)
    # A constant colour stays that colour, normalised with CLIP's mean/std.
    colour = torch.tensor([10, 128, 250], dtype=torch.uint8)
    flat = colour.view(1, 1, 1, 3).expand(1, h, w, 3).contiguous()
    expected = (colour.float() / 255.0 - bb.mean.view(3).cpu()) / bb.std.view(3).cpu()
    out = bb.preprocess(flat)[0].cpu()
    torch.testing.assert_close(out, expected.view(3, 1, 1).expand_as(out), atol=1e-4, rtol=0)


def test_preprocess_matches_resize_and_centre_crop(tiny_model):
    """Shorter side to 64 with the tower's interpolation (bicubic: open_clip's config for CLIP),
    centre crop (torchvision as the independent reference)."""
    tvf = pytest.importorskip("torchvision.transforms.v2.functional")
    from torchvision.transforms import InterpolationMode

    bb = tiny_model.backbone
    assert bb.image_cfg.interpolation == "bicubic"
    frames = torch.zeros(1, 240, 320, 3, dtype=torch.uint8)
    frames[:, :, 160:] = 255  # right half white: the crop position is visible in the output
    frames[:, :120, :, 1] = 200  # top half green: so is the vertical position
    chw = frames.permute(0, 3, 1, 2).float() / 255.0
    ref = tvf.center_crop(tvf.resize(chw, [64], InterpolationMode.BICUBIC, antialias=True).clamp(0, 1), [64, 64])
    ref = (ref - bb.mean.cpu()) / bb.std.cpu()
    torch.testing.assert_close(bb.preprocess(frames).cpu(), ref, atol=2e-2, rtol=0)


def test_text_states_and_mask_cover_sot_to_eot(tiny_model):
    bb = tiny_model.backbone
    texts = ["hello world", "a much longer sentence with several more words in it", ""]
    tokens = bb.tokenize(texts)
    ts = bb.encode_text_tokens(tokens)
    assert ts.states.shape == (3, 77, bb.embed_dim)
    assert ts.mask.shape == (3, 77) and ts.mask.dtype == torch.bool
    for i, text in enumerate(texts):
        n = len(bb.tokenizer.encode(text)) + 2 if text else 2
        assert tokens[i, 0] == bb.sot and tokens[i, n - 1] == bb.eot
        assert ts.mask[i, :n].all() and not ts.mask[i, n:].any(), text
        assert int(ts.pooled_index[i]) == n - 1
        assert (tokens[i, n:] == 0).all()


def test_long_text_keeps_last_words(tiny_model):
    bb = tiny_model.backbone
    words = [f"word{i}" for i in range(199)] + ["elephant"]
    text = " ".join(words)
    ids = bb.tokenizer.encode(text)
    assert len(ids) > 75
    tokens = bb.tokenize([text])[0]
    assert tokens[0] == bb.sot and tokens[76] == bb.eot
    assert tokens[1:76].tolist() == ids[-75:]
    last = bb.tokenizer.encode("elephant")
    assert tokens[76 - len(last) : 76].tolist() == last
    # and max_tokens caps it further, still keeping the end
    short = bb.tokenize([text], max_tokens=10)[0]
    assert short[1:11].tolist() == ids[-10:] and short[11] == bb.eot and not short[12:].any()
    ts = bb.encode_text_tokens(bb.tokenize([text]))
    assert ts.mask.all() and int(ts.pooled_index[0]) == 76



def test_text_pass_over_the_longest_sequence_gives_the_full_pass_states_and_estimates(tiny_cfg, perturbed_fusion):
    """CLIP's text tower is causal and pools at EOT, so the pass runs over the batch's longest
    sequence, not all 77 positions: every state up to a row's EOT equals the full pass (the pooled
    one equals open_clip's own encode_text), and fusion, which sees only the used positions, gives
    the estimates it gives on full-width states."""
    from models.backbone import create_backbone

    bb = create_backbone(tiny_cfg.vision)  # torch towers
    assert bb.text_prefix_exact
    texts = ["hello world", "a much longer sentence with several more words in it", ""]
    tokens = bb.tokenize(texts)
    longest = len(bb.tokenizer.encode(texts[1])) + 2
    widths = []
    tower = bb.text_tower
    bb.text_tower = lambda t: widths.append(t.shape[1]) or tower(t)
    ts = bb.encode_text_tokens(tokens)
    assert widths == [longest] and ts.states.shape == (3, 77, bb.embed_dim)
    with torch.inference_mode():
        full = bb._text_token_states(tokens)
        own = bb.clip.encode_text(tokens)
    assert torch.allclose(ts.states[ts.mask], full[ts.mask], atol=1e-5)
    assert torch.allclose(ts.states[torch.arange(3), ts.pooled_index], own, atol=1e-5)

    fusion = perturbed_fusion(seed=3)
    items = [_window(bb, 2, t, seed=i) for i, t in enumerate(texts)]
    used = build_inputs(items, ts, bb.embed_dim, bb.device)
    assert used.text.shape[1] == longest
    whole = FusionInputs(used.image, used.image_mask, used.image_age, full,
                         ts.mask & torch.tensor([bool(t) for t in texts]).unsqueeze(1), ts.pooled_index)
    with torch.no_grad():
        assert torch.allclose(fusion(used).probs, fusion(whole).probs, atol=1e-5)


# ---------------------------------------------------------------- zero-shot equivalence


def test_untrained_model_is_clip_zero_shot(tiny_model):
    bb = tiny_model.backbone
    fusion = copy.deepcopy(tiny_model.fusion)
    with torch.no_grad():  # gates stay 0; non-trivial precisions so the weighting formula is exercised
        fusion.log_vars.copy_(torch.tensor([0.3, -0.4, 0.8]))
    text = "what a wonderful and happy day"
    frames = _frames(3, seed=7)
    item = WindowInput(image=bb.encode_images(frames), image_age=torch.tensor([2.0, 1.0, 0.0]), text=text, n_words=6)
    with torch.no_grad():
        out = fusion(_inputs(tiny_model, [item]))

    scale = float(bb.clip.logit_scale.exp())
    prompts = _hand_prompt_matrix(bb)
    img = F.normalize(bb.encode_images(frames).mean(0, keepdim=True), dim=-1)
    txt = F.normalize(bb.encode_prompts([text]), dim=-1)
    img_logits, txt_logits = scale * img @ prompts.T, scale * txt @ prompts.T
    torch.testing.assert_close(out.logits[:, IMAGE], img_logits, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits[:, TEXT], txt_logits, atol=2e-4, rtol=1e-4)
    torch.testing.assert_close(out.logits[:, FUSED], (img_logits + txt_logits) / 2, atol=2e-4, rtol=1e-4)

    head_probs = torch.stack([img_logits, txt_logits, (img_logits + txt_logits) / 2], dim=1).softmax(-1)
    entropy = -(head_probs * head_probs.log()).sum(-1)
    conf = 1 - entropy / math.log(3)
    assert (conf > 1e-2).all()  # away from the clamp: the plain formula applies
    raw = torch.exp(-torch.tensor([0.3, -0.4, 0.8])) * conf
    weights = raw / raw.sum(-1, keepdim=True)
    probs = (weights.unsqueeze(-1) * head_probs).sum(1)
    torch.testing.assert_close(out.weights, weights, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.probs, probs, atol=1e-5, rtol=1e-4)
    assert out.available.all()


def test_head_weights_formula_and_availability():
    probs = torch.tensor([[[0.7, 0.2, 0.1], [0.4, 0.3, 0.3], [0.1, 0.1, 0.8]]] * 2)
    log_vars = torch.tensor([0.0, -1.0, 0.5])
    available = torch.tensor([[True, True, True], [False, True, False]])
    w = head_weights(probs, log_vars, available)
    conf = 1 - (-(probs * probs.log()).sum(-1)) / math.log(3)
    raw = torch.exp(-log_vars) * conf * available
    torch.testing.assert_close(w, raw / raw.sum(-1, keepdim=True))
    assert w[1].tolist() == [0.0, 1.0, 0.0]
    plain = head_weights(probs, log_vars, available, use_uncertainty=False)
    torch.testing.assert_close(plain, torch.tensor([[1 / 3] * 3, [0.0, 1.0, 0.0]]))
    assert head_weights(probs, log_vars, torch.zeros(2, 3, dtype=torch.bool)).abs().sum() == 0


def test_uncertainty_loss_formula():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 3, 3, generator=gen)
    target = torch.tensor([0, 1, 2, 1, 0])
    available = torch.ones(5, 3, dtype=torch.bool)
    available[0, 1] = False
    log_vars = torch.tensor([0.2, -0.3, 0.1])
    loss, per_head = uncertainty_loss(logits, target, available, log_vars)
    ce = torch.stack([F.cross_entropy(logits[available[:, h], h], target[available[:, h]]) for h in range(3)])
    torch.testing.assert_close(per_head, ce)
    torch.testing.assert_close(loss, (torch.exp(-log_vars) * ce + log_vars).sum())
    plain, _ = uncertainty_loss(logits, target, available, log_vars, use_uncertainty=False)
    torch.testing.assert_close(plain, ce.sum())


# ---------------------------------------------------------------- missing modalities


def test_text_missing_is_masked_and_image_alone_decides(tiny_model, perturbed_fusion):
    fusion = perturbed_fusion(seed=1)
    bb = tiny_model.backbone
    item = _window(bb, 4, "", seed=3)
    with torch.no_grad():
        a = fusion(_inputs(tiny_model, [item], ["this is absolutely terrible and sad"]))
        b = fusion(_inputs(tiny_model, [item], ["a wonderful happy day with friends and family"]))
        # ... and arbitrary garbage in the (masked) text states changes nothing either
        x = _inputs(tiny_model, [item])
        x.text = torch.randn_like(x.text) * 100
        c = fusion(x)
    assert not a.available[0, TEXT] and not a.available[0, FUSED] and a.available[0, IMAGE]
    for out in (b, c):
        torch.testing.assert_close(out.head_probs[:, IMAGE], a.head_probs[:, IMAGE], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.probs, a.head_probs[:, IMAGE], atol=1e-6, rtol=0)
    assert a.weights[0].tolist() == [1.0, 0.0, 0.0]
    assert a.modality_weights[0].tolist() == [1.0, 0.0]


def test_image_missing_is_masked_and_text_alone_decides(tiny_model, perturbed_fusion):
    fusion = perturbed_fusion(seed=2)
    bb = tiny_model.backbone
    text = "i am so happy about this result"
    item = _window(bb, 0, text)
    with torch.no_grad():
        a = fusion(_inputs(tiny_model, [item]))
        x = _inputs(tiny_model, [item])
        x.image = torch.randn_like(x.image) * 100  # masked frames: content must not matter
        x.image_age = torch.full_like(x.image_age, 3.0)
        b = fusion(x)
    assert a.available[0].tolist() == [False, True, False]
    torch.testing.assert_close(b.head_probs[:, TEXT], a.head_probs[:, TEXT], atol=1e-6, rtol=0)
    torch.testing.assert_close(a.probs, a.head_probs[:, TEXT], atol=1e-6, rtol=0)
    assert a.weights[0].tolist() == [0.0, 1.0, 0.0]
    assert a.modality_weights[0].tolist() == [0.0, 1.0]
    # Same when the image branch is present in the batch for another sample (padding per sample).
    other = _window(bb, 5, "something else entirely", seed=9)
    with torch.no_grad():
        both = fusion(_inputs(tiny_model, [item, other]))
    torch.testing.assert_close(both.head_probs[0, TEXT], a.head_probs[0, TEXT], atol=1e-5, rtol=0)
    torch.testing.assert_close(both.probs[0], a.probs[0], atol=1e-5, rtol=0)


def test_both_missing_gives_uniform_and_zero_weights(tiny_model, perturbed_fusion):
    fusion = perturbed_fusion(seed=3)
    item = _window(tiny_model.backbone, 0, "")
    with torch.no_grad():
        out = fusion(_inputs(tiny_model, [item], ["text states that must be ignored"]))
    assert not out.available.any()
    torch.testing.assert_close(out.probs, torch.full((1, 3), 1 / 3))
    assert out.weights.abs().sum() == 0 and out.modality_weights.abs().sum() == 0
    assert torch.isfinite(out.logits).all()


def test_empty_transcript_mask_is_all_false(tiny_model):
    bb = tiny_model.backbone
    items = [_window(bb, 2, ""), _window(bb, 2, "   "), _window(bb, 2, "hello there")]
    x = _inputs(tiny_model, items)
    assert not x.text_mask[0].any() and not x.text_mask[1].any()
    n = len(bb.tokenizer.encode("hello there")) + 2
    assert x.text_mask[2, :n].all() and not x.text_mask[2, n:].any()
    assert x.image_mask.all() and x.image.shape == (3, 2, bb.embed_dim)


def test_cross_attention_matters_when_gates_open(tiny_model, perturbed_fusion):
    """Guards the masking tests against being vacuous: with open gates text does move the image head."""
    fusion = perturbed_fusion(seed=1)
    bb = tiny_model.backbone
    item = _window(bb, 4, "x", seed=3)
    with torch.no_grad():
        a = fusion(_inputs(tiny_model, [item], ["this is absolutely terrible and sad"]))
        b = fusion(_inputs(tiny_model, [item], ["a wonderful happy day with friends and family"]))
        # and frames move the text head
        c = fusion(_inputs(tiny_model, [_window(bb, 4, "x", seed=4)], ["this is absolutely terrible and sad"]))
    assert (a.head_probs[:, IMAGE] - b.head_probs[:, IMAGE]).abs().max() > 1e-4
    assert (a.head_probs[:, TEXT] - c.head_probs[:, TEXT]).abs().max() > 1e-4
    # while with closed gates (untrained), text cannot move the image head
    with torch.no_grad():
        z1 = tiny_model.fusion(_inputs(tiny_model, [item], ["this is absolutely terrible and sad"]))
        z2 = tiny_model.fusion(_inputs(tiny_model, [item], ["a wonderful happy day with friends and family"]))
    torch.testing.assert_close(z1.head_probs[:, IMAGE], z2.head_probs[:, IMAGE], atol=1e-6, rtol=0)


# ---------------------------------------------------------------- uncertainty loss in training


def _synthetic_batch(gen, n: int, dim: int, means: torch.Tensor):
    labels = torch.randint(0, 3, (n,), generator=gen)
    tv, tw = 4, 6
    image = means[labels].unsqueeze(1) + 0.5 * torch.randn(n, tv, dim, generator=gen)
    text = torch.randn(n, tw, dim, generator=gen)  # pure noise, independent of the label
    x = FusionInputs(
        image=image,
        image_mask=torch.ones(n, tv, dtype=torch.bool),
        image_age=torch.rand(n, tv, generator=gen) * 8,
        text=text,
        text_mask=torch.ones(n, tw, dtype=torch.bool),
        text_pool=torch.full((n,), tw - 1, dtype=torch.long),
    )
    return x, labels


def _train(uncertainty: bool, steps: int = 200):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only contend (100x slower on a busy 2-core box)
    try:
        return _train_inner(uncertainty, steps)
    finally:
        torch.set_num_threads(threads)


def _train_inner(uncertainty: bool, steps: int):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    dim = 16
    # No cross-attention layers: the text head sees only its own noise (with layers the text branch
    # can legitimately learn the label from the frames through cross-attention).
    cfg = FusionConfig(layers=0, heads=2, ffn_mult=2, dropout=0.0, uncertainty=uncertainty)
    model = ClipCaMsa(dim, cfg, torch.randn(3, dim, generator=gen), logit_scale=10.0)
    means = 1.5 * torch.randn(3, dim, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        x, y = _synthetic_batch(gen, 64, dim, means)
        out = model(x)
        loss, _ = uncertainty_loss(out.logits, y, out.available, model.log_vars, uncertainty)
        opt.zero_grad()
        loss.backward()
        if not uncertainty:
            assert model.log_vars.grad is None or model.log_vars.grad.abs().sum() == 0
        opt.step()
    model.eval()
    with torch.no_grad():
        x, y = _synthetic_batch(gen, 256, dim, means)
        out = model(x)
    return model, out, y


def test_uncertainty_loss_raises_sigma_of_noise_head():
    model, out, y = _train(uncertainty=True)
    s = model.log_vars.detach()
    assert s[TEXT] > s[IMAGE] + 1.0, s
    assert (out.head_probs[:, IMAGE].argmax(-1) == y).float().mean() > 0.9
    w = out.weights.mean(0)
    assert w[TEXT] < w[IMAGE], w
    assert out.modality_weights.mean(0)[1] < out.modality_weights.mean(0)[0]


def test_without_uncertainty_log_vars_stay_zero():
    model, out, _ = _train(uncertainty=False, steps=30)
    assert model.log_vars.detach().abs().sum() == 0
    torch.testing.assert_close(out.weights, torch.full_like(out.weights, 1 / 3))


# ---------------------------------------------------------------- estimates from predict


def test_predict_estimates(tiny_model, perturbed_fusion):
    bb = tiny_model.backbone
    model = copy.copy(tiny_model)
    model.fusion = perturbed_fusion(seed=5)
    items = [
        _window(bb, 3, "i love this so much", seed=1),
        _window(bb, 0, "this is awful"),
        _window(bb, 2, "", seed=2),
        _window(bb, 0, ""),
    ]
    texts = bb.encode_texts([it.text for it in items])
    estimates = predict(model, items, texts)
    with torch.no_grad():
        out = model.fusion(build_inputs(items, texts, bb.embed_dim, model.device))
    assert len(estimates) == 4
    for i, (est, it) in enumerate(zip(estimates, items)):
        p = np.array([est.probs[label] for label in LABELS])
        assert list(est.probs) == list(LABELS)
        assert abs(p.sum() - 1) < 1e-5 and (p >= 0).all()
        np.testing.assert_allclose(p, out.probs[i].cpu().numpy(), atol=1e-5)
        assert -1 <= est.score <= 1 and abs(est.score - (p[2] - p[0])) < 1e-5
        present = it.image.shape[0] > 0 or bool(it.text)
        # nothing seen or heard: uniform probabilities, labelled neutral (not the first of a 3-way tie)
        assert est.label == (LABELS[int(np.argmax(p))] if present else "neutral")
        mw = est.modalities["image"]["weight"] + est.modalities["text"]["weight"]
        assert abs(mw - (1.0 if present else 0.0)) < 1e-5
        assert est.modalities["image"]["n"] == it.image.shape[0]
        assert est.modalities["text"]["n"] == it.n_words
        hp = [est.modalities["image"]["probs"][label] for label in LABELS]
        np.testing.assert_allclose(hp, out.head_probs[i, IMAGE].cpu().numpy(), atol=1e-5)
        assert abs(sum(est.head_weights.values()) - (1.0 if present else 0.0)) < 1e-5
    assert estimates[1].modalities["image"]["weight"] == 0 and estimates[1].modalities["text"]["weight"] == 1
    assert estimates[2].modalities["text"]["weight"] == 0 and estimates[2].modalities["image"]["weight"] == 1
    assert estimates[3].probs == {label: round(1 / 3, 6) for label in LABELS} and estimates[3].score == 0
    assert set(estimates[0].to_event_fields()) == {"label", "probs", "score", "modalities"}
