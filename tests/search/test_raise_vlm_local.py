"""RAISE's local-VLM backend with a tiny random LLaVA built from a config, offline: the chat template, the image
and generation run end to end; a random model's reply is no JSON, so the bounded retries end in a clear error."""

import pytest
import torch

from accel.search.raise_vlm import AgentError, TransformersChat, VLMAgent


@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor, PreTrainedTokenizerFast)

    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}[]\":,.?!-_'\n")
    vocab = {c: i for i, c in enumerate(["<pad>", "<s>", "</s>", "<unk>", "<image>"] + chars)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    template = ("{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
                "<image>{% else %}{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
                "{% if add_generation_prompt %}assistant: {% endif %}")
    processor = LlavaProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 28},
                                                                  crop_size={"height": 28, "width": 28}),
                               tokenizer=tokenizer, patch_size=14, chat_template=template,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                       num_attention_heads=2, image_size=28, patch_size=14, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, pad_token_id=0,
                                bos_token_id=1, eos_token_id=2),
        image_token_index=vocab["<image>"], vision_feature_layer=-1)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-llava")
    LlavaForConditionalGeneration(config).eval().save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def test_local_vlm_runs_and_fails_clearly(tiny_vlm):
    backend = TransformersChat(tiny_vlm, max_new_tokens=8, retries=2)
    image = torch.rand(3, 32, 32)
    with pytest.raises(AgentError, match="no valid JSON answer in 2 tries"):
        backend.chat("You verify images.", "is there a red circle?", image, {"type": "object"})
    with pytest.raises(AgentError, match="no valid JSON answer"):
        VLMAgent(backend).analyze("a photo of a red circle", image, None)


def test_local_vlm_bad_arguments(tiny_vlm, tmp_path):
    with pytest.raises(ValueError, match="retries"):
        TransformersChat(tiny_vlm, retries=0)
    with pytest.raises((OSError, ValueError)):
        TransformersChat(str(tmp_path))  # no model there; nothing is downloaded


def test_local_vlm_yes_no_verifier(tiny_vlm):
    from accel.rewards import VerifierReward
    from accel.search.raise_agents import ShapesAgent
    from accel.search.raise_vlm import TransformersVerifier

    verifier = TransformersVerifier(tiny_vlm)
    assert verifier.yes != verifier.no  # "y"/"Y" against "n"/"N" in the tiny character tokenizer
    images = torch.rand(2, 3, 32, 32)
    p = verifier.probabilities(images, ["is there a red circle?", "is there a blue square?"])
    assert p.shape == (2,) and bool(((p > 0) & (p < 1)).all())
    assert verifier(images[0], "is there a red circle?") == pytest.approx(float(p[0]), abs=1e-6)
    # As the offline agent's verifier, and as a reward asked the whole prompt.
    agent = ShapesAgent(verifier=verifier)
    verdict = agent.verify(images[0], agent.analyze("a photo of a red circle", None, None))
    assert len(verdict.answers) == 2 and verdict.answers[0] == pytest.approx(float(p[0]), abs=1e-6)
    scores = VerifierReward(verifier, mode="prompt").score(images, ["a cat on a mat"] * 2)
    assert scores.shape == (2,) and bool(((scores > 0) & (scores < 1)).all())
    with pytest.raises(ValueError, match="question"):
        TransformersVerifier(tiny_vlm, template="no placeholder")
