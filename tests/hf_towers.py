"""Tiny random transformers towers saved with `save_pretrained`, for tests without downloads.

* CLIP: a CLIPModel with the tiny test CLIP's shapes and a CLIPTokenizer built from open_clip's
  bundled BPE (its vocab and merges written as vocab.json / merges.txt), so ids agree with open_clip's
  tokenizer; `clip_from_open_clip` copies an open_clip CLIP's weights into it (the parity test).
* SigLIP: a SiglipModel and a SiglipTokenizer over a sentencepiece model trained here on a few
  hundred words (the real SigLIP tokenizer cannot be downloaded; this one is a real sentencepiece
  tokenizer of the same class, with the same special tokens and padding, only a tiny vocabulary).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch

TINY = dict(width=64, layers=2, heads=2, image_size=64, patch_size=16, embed_dim=64, context=77)
SIGLIP_CONTEXT = 16
WORDS = ("love great wonderful happy excellent amazing fantastic delightful hate awful terrible sad horrible "
         "disgusting miserable dreadful the movie today really was this so day food trip a photo of person "
         "feeling negative positive emotions calm neutral expression nothing in particular ordinary and "
         "matter of fact good bad upsetting angry smiling hello world what tested words").split()


def _clip_bpe() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """open_clip's bundled CLIP BPE as (vocab, merges) in transformers' names for the two specials."""
    import open_clip

    tok = open_clip.SimpleTokenizer()
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in tok.encoder.items()}
    return vocab, sorted(tok.bpe_ranks, key=tok.bpe_ranks.get)


def clip_config():
    from transformers import CLIPConfig, CLIPTextConfig, CLIPVisionConfig

    w = TINY["width"]
    text = CLIPTextConfig(vocab_size=49408, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=TINY["layers"],
                          num_attention_heads=TINY["heads"], max_position_embeddings=TINY["context"], hidden_act="gelu",
                          layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=49407, pad_token_id=0, projection_dim=TINY["embed_dim"])
    vision = CLIPVisionConfig(hidden_size=w, intermediate_size=4 * w, num_hidden_layers=TINY["layers"], num_attention_heads=TINY["heads"],
                              image_size=TINY["image_size"], patch_size=TINY["patch_size"], hidden_act="gelu", layer_norm_eps=1e-5,
                              projection_dim=TINY["embed_dim"])
    return CLIPConfig(text_config=text.to_dict(), vision_config=vision.to_dict(), projection_dim=TINY["embed_dim"],
                      logit_scale_init_value=math.log(1 / 0.07))


def save_tiny_clip(out: Path, state: dict[str, torch.Tensor] | None = None, seed: int = 0) -> Path:
    """A tiny CLIPModel (random, seeded; or `state`) + tokenizer + image processor in `out`."""
    from transformers import CLIPImageProcessor, CLIPModel, CLIPTokenizer

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = CLIPModel(clip_config()).eval()
    if state is not None:
        missing, unexpected = model.load_state_dict(state, strict=False)
        assert not unexpected and all("position_ids" in k for k in missing), (missing, unexpected)
    model.save_pretrained(out)
    vocab, merges = _clip_bpe()
    CLIPTokenizer(vocab=vocab, merges=merges, pad_token="<|endoftext|>", model_max_length=TINY["context"]).save_pretrained(out)
    s = TINY["image_size"]
    CLIPImageProcessor(size={"shortest_edge": s}, crop_size={"height": s, "width": s}).save_pretrained(out)
    return out


def _sentencepiece(out: Path) -> Path:
    import sentencepiece as spm

    corpus = out / "corpus.txt"
    corpus.write_text("\n".join(" ".join(WORDS[i:] + WORDS[:i]) for i in range(len(WORDS))) + "\n")
    prefix = out / "spiece"
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), vocab_size=64, hard_vocab_limit=False, model_type="unigram",
                                   pad_id=0, eos_id=1, unk_id=2, bos_id=-1, character_coverage=1.0, minloglevel=2)
    corpus.unlink()
    (out / "spiece.vocab").unlink()
    return prefix.with_suffix(".model")


def save_tiny_siglip(out: Path, seed: int = 0) -> Path:
    """A tiny SiglipModel (random, seeded) + a local sentencepiece SiglipTokenizer + image processor."""
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel, SiglipTextConfig, SiglipTokenizer, SiglipVisionConfig

    out.mkdir(parents=True, exist_ok=True)
    w = TINY["width"]
    text = SiglipTextConfig(vocab_size=200, hidden_size=w, intermediate_size=4 * w, num_hidden_layers=TINY["layers"],
                            num_attention_heads=TINY["heads"], max_position_embeddings=SIGLIP_CONTEXT, pad_token_id=0, eos_token_id=1)
    vision = SiglipVisionConfig(hidden_size=w, intermediate_size=4 * w, num_hidden_layers=TINY["layers"], num_attention_heads=TINY["heads"],
                                image_size=TINY["image_size"], patch_size=TINY["patch_size"])
    torch.manual_seed(seed)
    model = SiglipModel(SiglipConfig(text_config=text.to_dict(), vision_config=vision.to_dict())).eval()
    with torch.no_grad():  # SigLIP's published init: scale log(10), bias -10 (random init draws them)
        model.logit_scale.fill_(math.log(10.0))
        model.logit_bias.fill_(-10.0)
    model.save_pretrained(out)
    sp = _sentencepiece(out)
    SiglipTokenizer(str(sp), model_max_length=SIGLIP_CONTEXT).save_pretrained(out)
    s = TINY["image_size"]
    SiglipImageProcessor(size={"height": s, "width": s}).save_pretrained(out)
    return out


def clip_from_open_clip(clip: torch.nn.Module) -> dict[str, torch.Tensor]:
    """An open_clip CLIP's state dict in transformers CLIPModel names (q/k/v split, projections transposed)."""
    sd = {k: v.detach().cpu().float() for k, v in clip.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def blocks(src: str, dst: str, n: int) -> None:
        for i in range(n):
            s, d = f"{src}.resblocks.{i}", f"{dst}.encoder.layers.{i}"
            q, k, v = sd[f"{s}.attn.in_proj_weight"].chunk(3)
            qb, kb, vb = sd[f"{s}.attn.in_proj_bias"].chunk(3)
            for name, wt, b in (("q_proj", q, qb), ("k_proj", k, kb), ("v_proj", v, vb)):
                out[f"{d}.self_attn.{name}.weight"], out[f"{d}.self_attn.{name}.bias"] = wt, b
            pairs = (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
                     ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
            for a, b2 in pairs:
                out[f"{d}.{b2}.weight"], out[f"{d}.{b2}.bias"] = sd[f"{s}.{a}.weight"], sd[f"{s}.{a}.bias"]

    out["text_model.embeddings.token_embedding.weight"] = sd["token_embedding.weight"]
    out["text_model.embeddings.position_embedding.weight"] = sd["positional_embedding"]
    blocks("transformer", "text_model", TINY["layers"])
    out["text_model.final_layer_norm.weight"], out["text_model.final_layer_norm.bias"] = sd["ln_final.weight"], sd["ln_final.bias"]
    out["text_projection.weight"] = sd["text_projection"].T.contiguous()
    out["vision_model.embeddings.class_embedding"] = sd["visual.class_embedding"]
    out["vision_model.embeddings.position_embedding.weight"] = sd["visual.positional_embedding"]
    out["vision_model.embeddings.patch_embedding.weight"] = sd["visual.conv1.weight"]
    for a, b in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        out[f"vision_model.{b}.weight"], out[f"vision_model.{b}.bias"] = sd[f"visual.{a}.weight"], sd[f"visual.{a}.bias"]
    blocks("visual.transformer", "vision_model", TINY["layers"])
    out["visual_projection.weight"] = sd["visual.proj"].T.contiguous()
    out["logit_scale"] = sd["logit_scale"].reshape(())
    return out
