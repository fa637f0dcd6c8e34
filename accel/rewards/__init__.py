"""Rewards for inference-time search: score(samples, prompts) -> (B,), higher is better, batched.

Each reward declares `reads` ("pixels": (B, 3, H, W) in [0, 1]; "latents": the sampler's latents).
`accel.rewards.base.evaluate` checks an output (shape, finite) and raises ValueError otherwise.
"""

from accel.rewards.base import READS, evaluate
from accel.rewards.clip import (AestheticHead, AestheticReward, CLIPEmbedder, CLIPReward, OpenCLIPReward,
                                clip_preprocess, open_clip_available)
from accel.rewards.composite import WeightedReward, fit_weights
from accel.rewards.judge import Judge, JudgeReward
from accel.rewards.shapes import ShapesReward, parse_shapes_prompt
from accel.rewards.verifier import ExactVerifier, ShapesVerifier, VerifierReward

__all__ = [
    "READS", "AestheticHead", "AestheticReward", "CLIPEmbedder", "CLIPReward", "ExactVerifier", "Judge",
    "JudgeReward", "OpenCLIPReward", "ShapesReward", "ShapesVerifier", "VerifierReward", "WeightedReward",
    "clip_preprocess", "evaluate", "fit_weights", "get_reward", "open_clip_available", "parse_shapes_prompt",
]

REWARDS = ("shapes", "shapes-lenient", "shapes-verifier", "shapes-verifier:prompt", "shapes-detector",
           "shapes-detector:prompt")


def get_reward(name: str):
    """A reward by name: "shapes" (strict checker score, the built-in model's default), "shapes-lenient" (GenEval's
    rules only), "shapes-verifier" (the built-in learned verifier: the product of P(yes) over the prompt's
    requirements; ":prompt": P(yes) asked of the whole prompt), "shapes-detector" (the same questions answered by
    the built-in learned detector and GenEval's rules, accel.rewards.detector). Other weighted rewards (CLIP,
    aesthetic) are built from their weights: CLIPReward.from_pretrained(...),
    VerifierReward(ShapesVerifier.from_pretrained(folder))."""
    if name == "shapes":
        return ShapesReward(strict=True)
    if name == "shapes-lenient":
        return ShapesReward(strict=False)
    if name in ("shapes-verifier", "shapes-verifier:prompt"):
        mode = "prompt" if name.endswith(":prompt") else "product"
        return VerifierReward(ShapesVerifier.from_pretrained(), mode)
    if name in ("shapes-detector", "shapes-detector:prompt"):
        from accel.rewards.detector import DetectorVerifier

        mode = "prompt" if name.endswith(":prompt") else "product"
        return VerifierReward(DetectorVerifier.from_pretrained(), mode)
    raise ValueError(f"unknown reward {name!r}; allowed: {', '.join(REWARDS)} (or pass a Reward object)")
