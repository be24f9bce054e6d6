"""The sentiment experts with real weights (models/experts) and how they enter the fusion and the events:
VADER lexicon, MiniLM sentence head, FER expression; random CLIP heads weigh nothing."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from models.errors import ConfigError, UserError
from models.experts import EXPERTS, create_text_expert, create_text_experts
from models.experts.hf_text import label_map
from models.experts.lexicon import Calibration
from models.factory import build_fusion, clip_heads_on
from models.fusion import FusionInputs
from models.prompts import LABELS
from scripts.media import make_speech_clip, require_tools
from stream.asr.agreement import Word
from stream.config import load_config
from stream.windows import TranscriptWindow

ROOT = Path(__file__).parent.parent
TINY = str(ROOT / "configs" / "tiny-test.yaml")
POSITIVE = "I love this, it's wonderful. What a great day!"
NEGATIVE = "This is terrible. I'm really upset and disappointed."
NEUTRAL = "We will meet in the office on Tuesday morning."


@pytest.fixture(scope="module")
def text_experts():
    return create_text_experts("lexicon", "minilm")


@pytest.mark.parametrize("head", ["lexicon", "sentence"])
def test_text_experts_read_the_polarity_of_plain_sentences(text_experts, head):
    probs = text_experts[head].predict([POSITIVE, NEGATIVE, NEUTRAL])
    assert probs.shape == (3, 3) and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert [LABELS[i] for i in probs.argmax(1)] == ["positive", "negative", "neutral"]


def test_lexicon_calibration_file_is_checked(tmp_path):
    bad = tmp_path / "lexicon.json"
    bad.write_text(json.dumps({"weight": [[1, 2, 3]], "bias": [0, 0, 0]}))
    with pytest.raises(UserError, match="expected"):
        Calibration.load(bad)
    bad.write_text("{not json")
    with pytest.raises(UserError, match="unreadable"):
        Calibration.load(bad)


def test_unknown_expert_specs_are_config_errors():
    with pytest.raises(ConfigError, match="experts.text"):
        create_text_expert("wordnet")
    with pytest.raises(ConfigError, match="experts.sentence"):
        create_text_experts("none", "bert")


def test_hf_label_maps():
    m = label_map({0: "NEGATIVE", 1: "POSITIVE"})
    assert m.tolist() == [[1, 0, 0], [0, 0, 1]]
    m = label_map({i: f"{i + 1} stars" for i in range(5)})
    assert m.argmax(1).tolist() == [0, 0, 1, 2, 2]
    with pytest.raises(UserError, match="LABEL_0"):
        label_map({0: "LABEL_0", 1: "LABEL_1"})


def test_hf_text_expert_runs_a_local_sequence_classifier(tmp_path):
    """A tiny BERT classifier made here (random weights): the expert's probabilities are the model's own
    softmax mapped through its config's labels."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "i", "love", "hate", "this", "the", "train"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"}, label2id={"negative": 0, "neutral": 1, "positive": 2})
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(tmp_path)
    expert = create_text_expert(f"hf:{tmp_path}")
    texts = ["i love this", "i hate the train"]
    got = expert.predict(texts)
    tok = BertTokenizerFast.from_pretrained(tmp_path)
    with torch.no_grad():
        want = model(**tok(texts, padding=True, return_tensors="pt")).logits.softmax(-1).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert expert.name == f"hf:{tmp_path}"
    with pytest.raises(UserError, match="cannot load"):
        create_text_expert(f"hf:{tmp_path / 'missing'}")


def test_utterance_is_the_words_after_the_last_pause():
    w = TranscriptWindow(8.0)
    w.add_final([Word(0.0, 0.4, "I"), Word(0.5, 0.9, "hate"), Word(1.0, 1.4, "it."),
                 Word(3.0, 3.4, "Now"), Word(3.5, 3.9, "I"), Word(4.0, 4.4, "love")])
    w.set_partial([Word(4.5, 4.9, "it.")])
    assert w.utterance(5.0, gap=0.8) == ("Now I love it.", 4)
    assert w.utterance(5.0, gap=2.0)[1] == 7  # no pause that long: the whole window
    assert w.utterance(2.0, gap=0.8) == ("I hate it.", 3)  # in the pause after a sentence: that sentence
    assert TranscriptWindow(8.0).utterance(1.0, 0.8) == ("", 0)
    # A sentence longer than the window is read whole (up to max_seconds back), not cut at the window.
    long = TranscriptWindow(2.0)
    long.add_final([Word(0.5 * i, 0.5 * i + 0.4, f"w{i}") for i in range(10)])
    assert long.utterance(5.0, gap=0.8)[1] == 4 and long.utterance(5.0, gap=0.8, max_seconds=20)[1] == 10


def _inputs(dim: int, experts: torch.Tensor, mask: torch.Tensor) -> FusionInputs:
    b = experts.shape[0]
    return FusionInputs(torch.randn(b, 2, dim), torch.ones(b, 2, dtype=torch.bool), torch.zeros(b, 2), torch.randn(b, 4, dim),
                        torch.ones(b, 4, dtype=torch.bool), torch.full((b,), 3), experts, mask)


def test_random_clip_heads_weigh_nothing_and_experts_decide(tiny_model, tiny_cfg):
    assert not clip_heads_on("auto", "random") and clip_heads_on("auto", "pretrained") and clip_heads_on("on", "random")
    fusion = build_fusion(tiny_model.backbone, tiny_cfg)
    fusion.clip_heads = False
    experts = torch.tensor([[[0.1, 0.2, 0.7], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]]])
    with torch.no_grad():
        out = fusion(_inputs(tiny_model.backbone.embed_dim, experts, torch.tensor([[True, True, False]])))
    w = out.weights[0]
    assert w[:3].abs().max() == 0 and float(w[3:5].sum()) == pytest.approx(1.0) and w[5] == 0  # no face: no expression weight
    assert LABELS[int(out.probs[0].argmax())] == "positive"
    fusion.clip_heads = True
    with torch.no_grad():
        assert fusion(_inputs(tiny_model.backbone.embed_dim, experts, torch.tensor([[True, True, False]]))).weights[0, :3].sum() > 0
    with torch.no_grad():
        none = fusion(_inputs(tiny_model.backbone.embed_dim, experts, torch.zeros(1, len(EXPERTS), dtype=torch.bool)))
    assert none.weights[0, 3:].abs().max() == 0


def test_training_moves_the_experts_log_variances(tiny_model, tiny_cfg):
    """The uncertainty loss reaches the experts' s_m: a wrong expert's precision goes down, a right one's up."""
    from models.uncertainty import uncertainty_loss

    fusion = build_fusion(tiny_model.backbone, tiny_cfg).train()
    y = torch.tensor([2, 2, 0, 0])
    right = torch.nn.functional.one_hot(y, 3).float() * 0.8 + 0.2 / 3
    wrong = right.flip(-1)
    experts = torch.stack([right, wrong, right], dim=1)
    opt = torch.optim.SGD([fusion.expert_log_vars], lr=0.5)
    for _ in range(20):
        out = fusion(_inputs(tiny_model.backbone.embed_dim, experts, torch.ones(4, 3, dtype=torch.bool)))
        loss, _ = uncertainty_loss(out.logits, y, out.available, fusion.head_log_vars, True)
        opt.zero_grad()
        loss.backward()
        opt.step()
    s = fusion.expert_log_vars.detach()
    assert s[EXPERTS.index("sentence")] > 0.5 > s[EXPERTS.index("lexicon")]


def test_checkpoint_from_before_the_experts_still_loads(tiny_model, tiny_cfg, tmp_path):
    from models.checkpoint import load_checkpoint, save_checkpoint

    fusion = build_fusion(tiny_model.backbone, tiny_cfg)
    save_checkpoint(tmp_path / "old", fusion, tiny_cfg, tiny_model.backbone.embed_dim)
    from safetensors.torch import load_file, save_file
    tensors = load_file(str(tmp_path / "old" / "model.safetensors"))
    del tensors["expert_log_vars"]
    save_file(tensors, str(tmp_path / "old" / "model.safetensors"), metadata={"format": "sentistream-checkpoint/1"})
    fresh = build_fusion(tiny_model.backbone, tiny_cfg)
    load_checkpoint(tmp_path / "old", fresh, tiny_cfg, tiny_model.backbone.embed_dim)
    assert fresh.expert_log_vars.abs().max() == 0


def test_experts_config_section_defaults():
    cfg = load_config(ROOT / "configs" / "default.yaml")
    assert (cfg.experts.text, cfg.experts.sentence, cfg.experts.face, cfg.experts.clip_heads) == ("lexicon", "minilm", "expression", "auto")
    with pytest.raises(ConfigError, match="experts.clip_heads"):
        load_config(None, ["experts.clip_heads=maybe"])


def _run(*args: str) -> list[dict]:
    res = subprocess.run([sys.executable, "-m", "stream.cli", "run", *args], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-2000:]
    return [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]


EXPERTS_ON = ["--set", "experts.text=lexicon", "--set", "experts.sentence=minilm", "--set", "experts.face=expression",
              "--set", "experts.clip_heads=auto"]


@pytest.mark.slow
def test_spoken_polarity_follows_the_sentences_with_random_clip(tmp_path):
    """Random CLIP + the experts: after each spoken sentence the estimate has its polarity, and the
    CLIP modalities say they are off."""
    require_tools("espeak-ng", "ffmpeg")
    wav, timings = make_speech_clip([POSITIVE, NEGATIVE, NEUTRAL, POSITIVE], 2.0, tmp_path / "s.wav")
    events = _run("--source", str(wav), "--config", TINY, *EXPERTS_ON, )
    sentiment = [e for e in events if e["type"] == "sentiment"]
    for (text, _, end), want in zip(timings, ["positive", "negative", "neutral", "positive"]):
        after = [e for e in sentiment if end + 0.5 <= e["t"] <= end + 1.9]
        assert after and after[-1]["label"] == want, (text, [(e["t"], e["label"]) for e in after])
    last = sentiment[-1]["modalities"]
    assert last["image"]["weight"] == 0 and last["text"]["weight"] == 0 and "off" in last["text"]
    assert last["lexicon"]["model"] == "vader" and last["sentence"]["model"] == "minilm-l6"
    assert any(e["modalities"]["sentence"]["weight"] > 0 and e["modalities"]["lexicon"]["weight"] > 0 for e in sentiment)


@pytest.mark.slow
def test_astronaut_face_is_positive_with_expression_weight(tmp_path):
    """The skimage astronaut (a real smiling face) as a 3 s video: her face's estimate is positive, with a
    non-zero expression weight and the 7 emotions led by happy."""
    import cv2
    from skimage import data

    require_tools("ffmpeg")
    png = tmp_path / "astronaut.png"
    cv2.imwrite(str(png), cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR))
    clip = tmp_path / "astronaut.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-loop", "1", "-i", str(png), "-t", "3", "-r", "15",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", str(clip)], check=True)
    events = _run("--source", str(clip), "--config", TINY, *EXPERTS_ON, )
    faces = [f for e in events if e["type"] == "sentiment" for f in e.get("faces", [])]
    assert faces, "no face tracked"
    last = faces[-1]
    assert last["label"] == "positive" and last["modalities"]["expression"]["weight"] > 0
    assert max(last["emotions"], key=last["emotions"].get) == "happy"
    whole = [e for e in events if e["type"] == "sentiment"][-1]
    assert whole["label"] == "positive" and whole["modalities"]["expression"]["n"] > 0


def test_an_estimate_without_any_evidence_is_neutral_and_uniform(tiny_model):
    """Nothing seen or heard yet: every weight is 0, the probabilities uniform, and the label neutral
    (not the first class of a three-way tie)."""
    from models.inference import WindowInput, predict

    d = tiny_model.backbone.embed_dim
    window = WindowInput(torch.zeros(0, d), torch.zeros(0))
    text = tiny_model.backbone.encode_texts([""], 75)
    est = predict(tiny_model, [window], text)[0]
    assert est.label == "neutral" and list(est.probs.values()) == pytest.approx([1 / 3] * 3, abs=1e-5)
    assert all(m["weight"] == 0 for m in est.modalities.values())
