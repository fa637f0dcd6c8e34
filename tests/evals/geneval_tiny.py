"""Tiny random Mask2Former, OWLv2 and CLIP folders for the GenEval tests, built offline from configs."""

from __future__ import annotations

import string
from pathlib import Path

import torch


def tokenizer():
    """A character-level CLIP tokenizer whose start token is not id 0 (OWLv2 reads a query starting with 0 as
    padding)."""
    from transformers import CLIPTokenizer

    vocab = {}
    for suffix in ("", "</w>"):
        for c in string.ascii_lowercase + string.digits + string.punctuation:
            vocab[c + suffix] = len(vocab)
    vocab["<|startoftext|>"], vocab["<|endoftext|>"] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def _text(length: int) -> dict:
    return dict(vocab_size=len(tokenizer()), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                num_attention_heads=4, max_position_embeddings=length, pad_token_id=len(tokenizer()) - 1,
                bos_token_id=len(tokenizer()) - 2, eos_token_id=len(tokenizer()) - 1)


VISION = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
              num_attention_heads=4)


def mask2former(path: Path, labels: list[str] | None = None) -> Path:
    """80 classes (read as GenEval's, in COCO's order) or the given label names."""
    from transformers import Mask2FormerConfig, Mask2FormerForUniversalSegmentation, SwinConfig
    from transformers import Mask2FormerImageProcessorPil

    torch.manual_seed(0)
    swin = SwinConfig(image_size=32, patch_size=4, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                      window_size=2, out_features=["stage1", "stage2", "stage3", "stage4"])
    names = {} if labels is None else {"id2label": dict(enumerate(labels)), "label2id": {n: i for i, n in
                                                                                          enumerate(labels)}}
    cfg = Mask2FormerConfig(backbone_config=swin, num_labels=80 if labels is None else len(labels), **names,
                            hidden_dim=32, num_queries=6,
                            encoder_layers=1, decoder_layers=2, num_attention_heads=2, dim_feedforward=32,
                            mask_feature_size=32, feature_size=32, encoder_feedforward_dim=32, common_stride=4)
    Mask2FormerForUniversalSegmentation(cfg).eval().save_pretrained(path)
    Mask2FormerImageProcessorPil(size={"height": 64, "width": 64}).save_pretrained(path)
    return path


def owlv2(path: Path) -> Path:
    from transformers import Owlv2Config, Owlv2ForObjectDetection, Owlv2ImageProcessorPil

    torch.manual_seed(0)
    cfg = Owlv2Config(text_config=_text(16), vision_config=VISION, projection_dim=32)
    Owlv2ForObjectDetection(cfg).eval().save_pretrained(path)
    tokenizer().save_pretrained(path)
    Owlv2ImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def clip(path: Path) -> Path:
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    torch.manual_seed(0)
    CLIPModel(CLIPConfig(text_config=_text(77), vision_config=VISION, projection_dim=16)).eval().save_pretrained(path)
    tokenizer().save_pretrained(path)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(path)
    return path
