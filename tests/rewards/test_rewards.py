"""Rewards: the exact shapes score, CLIP and aesthetic heads built tiny and offline, composites, the judge adapter,
and output checking."""

import numpy as np
import pytest
import torch

from accel.pipelines.shapes import build_tokenizer
from accel.rewards import (AestheticHead, AestheticReward, CLIPReward, JudgeReward, OpenCLIPReward, ShapesReward,
                           WeightedReward, evaluate, fit_weights, get_reward, open_clip_available,
                           parse_shapes_prompt)
from accel.shapes import prompt_set, render, scene_for

PROMPTS = ["a photo of a red circle", "a photo of two squares"]


def test_parse_inverts_the_grammar():
    for meta in prompt_set(60, seed=3):
        assert parse_shapes_prompt(meta["prompt"]) == meta
    with pytest.raises(ValueError, match="templates are"):
        parse_shapes_prompt("a photo of a dog")
    with pytest.raises(ValueError, match="colour both objects or neither"):
        parse_shapes_prompt("a photo of a red circle and a square")


def rendered(meta, seed=0):
    img = render(scene_for(meta, np.random.default_rng(seed)))  # (32, 32, 3) uint8, exactly the prompt
    return torch.from_numpy(img).permute(2, 0, 1).float()[None] / 255


def test_shapes_reward_is_the_checkers_score():
    metas = prompt_set(12, seed=1)
    good = torch.cat([rendered(m) for m in metas])
    assert torch.equal(ShapesReward().score(good, [m["prompt"] for m in metas]), torch.ones(12))
    blank = torch.zeros(2, 3, 32, 32)
    scores = ShapesReward().score(blank, PROMPTS)
    assert scores.shape == (2,) and torch.all(scores < 1)
    # Extra clutter passes GenEval's lenient rules but not the strict default.
    two = rendered(parse_shapes_prompt("a photo of a circle and a square"))
    lenient = ShapesReward(strict=False).score(two, ["a photo of a circle"])
    assert float(lenient) == 1.0 and float(ShapesReward().score(two, ["a photo of a circle"])) < 1.0
    # Metadata given by the caller for a prompt outside the grammar.
    meta = parse_shapes_prompt("a photo of a square")
    custom = ShapesReward(metadata={"one box": meta})
    assert float(custom.score(rendered(meta), ["one box"])) == 1.0
    with pytest.raises(ValueError, match="reads pixels"):
        ShapesReward().score(torch.zeros(2, 32, 32), PROMPTS)
    assert get_reward("shapes").strict and not get_reward("shapes-lenient").strict
    with pytest.raises(ValueError, match="allowed: shapes, shapes-lenient"):
        get_reward("geneval-owlv2")


@pytest.fixture(scope="module")
def clip():
    from transformers import CLIPConfig, CLIPModel

    tok = build_tokenizer()
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                         eos_token_id=2),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=37, num_hidden_layers=1,
                           num_attention_heads=4),
        projection_dim=16)
    return CLIPReward(CLIPModel(cfg), tok)


def test_clip_reward(clip, gen, tmp_path):
    images = torch.rand(2, 3, 40, 48, generator=gen)  # any size: centre crop + resize to the model's 32
    s = evaluate(clip, images, PROMPTS)
    assert s.shape == (2,) and torch.all(s.abs() <= 1 + 1e-5)
    assert len(clip._text_cache) == 2
    # Exactly the cosine of the two embeddings.
    cos = (clip.embed_images(images) * clip.embed_texts(PROMPTS)).sum(-1)
    torch.testing.assert_close(s, cos)
    # Real weights load from a folder (or hub id) with safetensors only, offline here.
    clip.model.save_pretrained(tmp_path)
    clip.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    again = CLIPReward.from_pretrained(str(tmp_path))
    torch.testing.assert_close(again.score(images, PROMPTS), s, atol=1e-5, rtol=1e-5)


def test_aesthetic_reward(clip, gen, tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    head = AestheticHead(embed_dim=16, hidden=(8, 8, 8, 4)).eval()
    images = torch.rand(3, 3, 32, 32, generator=gen)
    s = evaluate(AestheticReward(clip, head), images, ["", "", ""])
    with torch.no_grad():
        ref = head(clip.embed_images(images))
    torch.testing.assert_close(s, ref)
    # The released LAION head's state-dict layout: layers.{0,2,4,6,7}.
    assert {k.split(".")[1] for k in head.state_dict()} == {"0", "2", "4", "6", "7"}
    big = AestheticHead()
    save_file(big.state_dict(), str(tmp_path / "head.safetensors"))
    loaded = AestheticHead.from_safetensors(str(tmp_path / "head.safetensors"))
    emb = torch.nn.functional.normalize(torch.randn(2, 768, generator=gen), dim=-1)
    torch.testing.assert_close(loaded(emb), big.eval()(emb))


class Const:
    def __init__(self, value, reads="pixels"):
        self.value, self.reads = value, reads

    def score(self, samples, prompts):
        return torch.full((samples.shape[0],), self.value)


def test_weighted_reward_and_calibration(gen):
    x = torch.rand(2, 3, 8, 8, generator=gen)
    w = WeightedReward([(Const(1.0), 0.25), (Const(2.0), 0.75)])
    torch.testing.assert_close(w.score(x, PROMPTS), torch.full((2,), 1.75))
    with pytest.raises(ValueError, match="same input"):
        WeightedReward([(Const(1.0), 1.0), (Const(1.0, "latents"), 1.0)])
    with pytest.raises(ValueError, match="at least one"):
        WeightedReward([])
    terms = torch.rand(50, 3, generator=gen)
    target = terms @ torch.tensor([0.5, 0.0, 2.0])
    torch.testing.assert_close(fit_weights(terms, target), torch.tensor([0.5, 0.0, 2.0]), atol=1e-4, rtol=0)
    anti = terms @ torch.tensor([1.0, -1.0, 0.0])
    assert torch.all(fit_weights(terms, anti) >= 0)


def test_judge_reward(gen):
    x = torch.rand(2, 3, 8, 8, generator=gen)
    seen = {}

    def judge(images, prompts):
        seen["sizes"] = [im.size for im in images]
        return [7.0, 3.0]

    r = JudgeReward(judge, low=1.0, high=10.0)
    torch.testing.assert_close(evaluate(r, x, PROMPTS), torch.tensor([6 / 9, 2 / 9]))
    assert seen["sizes"] == [(8, 8), (8, 8)]
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        evaluate(JudgeReward(lambda im, p: [1.0]), x, PROMPTS)
    with pytest.raises(ValueError, match="numbers"):
        evaluate(JudgeReward(lambda im, p: ["good", "bad"]), x, PROMPTS)


def test_evaluate_rejects_bad_outputs(gen):
    x = torch.rand(2, 3, 8, 8, generator=gen)
    with pytest.raises(ValueError, match="2 samples for 3 prompts"):
        evaluate(Const(1.0), x, PROMPTS[:1] * 3)
    bad_shape = Const(1.0)
    bad_shape.score = lambda s, p: torch.zeros(2, 1)
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        evaluate(bad_shape, x, PROMPTS)
    with pytest.raises(ValueError, match="non-finite"):
        evaluate(Const(float("nan")), x, PROMPTS)


def test_open_clip_is_guarded():
    if open_clip_available():
        pytest.skip("open_clip imports here; the guard is for machines where it cannot")
    with pytest.raises(ImportError, match="open_clip"):
        OpenCLIPReward.from_pretrained("ViT-B-32")
