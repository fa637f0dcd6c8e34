"""CLIP text-image score and the LAION-style aesthetic head on CLIP image embeddings.

CLIPReward uses transformers' CLIPModel (no torchvision needed); OpenCLIPReward uses open_clip when it imports
(it needs a working torchvision: see the guard). Images are preprocessed in torch (centre crop, resize, CLIP
normalisation) so a batch stays on its device and the score stays differentiable.
Real weights load from a local folder or hub id at the user's site, safetensors only.
"""

from __future__ import annotations

import importlib.util
from abc import ABC, abstractmethod
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from accel.rewards.base import check_pixels

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(pixels: torch.Tensor, size: int, mean=OPENAI_MEAN, std=OPENAI_STD) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, size, size) normalised: centre square crop, then bicubic resize."""
    h, w = pixels.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    x = pixels[..., top:top + side, left:left + side].float()
    if side != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False, antialias=side > size)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


class CLIPEmbedder(ABC):
    """Unit-norm CLIP embeddings of images (B, 3, H, W) in [0, 1] and of texts; text embeddings are cached."""

    def __init__(self):
        self._text_cache: dict[str, torch.Tensor] = {}

    @abstractmethod
    def _image_features(self, pixels: torch.Tensor) -> torch.Tensor: ...

    @abstractmethod
    def _text_features(self, prompts: list[str]) -> torch.Tensor: ...

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self._image_features(pixels).float(), dim=-1)  # (B, D)

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        new = sorted({p for p in prompts if p not in self._text_cache})
        if new:
            with torch.no_grad():
                for p, e in zip(new, F.normalize(self._text_features(new).float(), dim=-1)):
                    self._text_cache[p] = e
        return torch.stack([self._text_cache[p] for p in prompts])  # (B, D)


class CLIPReward(CLIPEmbedder):
    """CLIP text-image cosine similarity (Radford et al., 2021; as CLIPScore, Hessel et al., 2021, without its
    2.5 * max(cos, 0) rescaling), with transformers' CLIPModel.

    score(samples, prompts): samples (B, 3, H, W) float in [0, 1] -> (B,) cosine in [-1, 1].
    """

    reads: Literal["pixels", "latents"] = "pixels"

    def __init__(self, model, tokenizer):
        super().__init__()
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = model.config.vision_config.image_size

    @classmethod
    def from_pretrained(cls, path_or_id: str, device: str | None = None) -> CLIPReward:
        """Load a CLIPModel folder or hub id (e.g. openai/clip-vit-large-patch14) with safetensors weights."""
        from transformers import AutoTokenizer, CLIPModel

        model = CLIPModel.from_pretrained(path_or_id, use_safetensors=True)
        if device is not None:
            model = model.to(device)
        return cls(model, AutoTokenizer.from_pretrained(path_or_id))

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def _image_features(self, pixels):
        x = clip_preprocess(pixels.to(self._device()), self.image_size)
        return _pooled(self.model.get_image_features(pixel_values=x))

    def _text_features(self, prompts):
        max_len = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=max_len, return_tensors="pt")
        return _pooled(self.model.get_text_features(input_ids=tok.input_ids.to(self._device()),
                                                    attention_mask=tok.attention_mask.to(self._device())))

    def score(self, samples: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_pixels(samples, type(self).__name__)
        return (self.embed_images(samples) * self.embed_texts(prompts).to(samples.device)).sum(-1)


def _pooled(out) -> torch.Tensor:
    # transformers 5 returns an output object whose pooler_output is the projected embedding; 4.x a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def open_clip_available() -> bool:
    """Whether open_clip imports here. It needs torchvision, and a torchvision built for another torch fails at
    import with a RuntimeError rather than an ImportError (shared/notes/environment-cpu.md), so try it."""
    if importlib.util.find_spec("open_clip") is None:
        return False
    try:
        import open_clip  # noqa: F401
    except Exception:  # ImportError, or torchvision's RuntimeError "operator torchvision::nms does not exist"
        return False
    return True


class OpenCLIPReward(CLIPReward):
    """CLIP cosine similarity with an open_clip model (e.g. ViT-H-14 / laion2b). Needs open_clip + torchvision.

    `model` is an open_clip CLIP model, `tokenizer` open_clip's tokenizer callable.
    """

    def __init__(self, model, tokenizer, image_size: int, mean=OPENAI_MEAN, std=OPENAI_STD):
        CLIPEmbedder.__init__(self)
        self.model, self.tokenizer, self.image_size = model.eval(), tokenizer, image_size
        self.mean, self.std = mean, std

    @classmethod
    def from_pretrained(cls, name: str, pretrained: str | None = None, device: str | None = None) -> OpenCLIPReward:
        if not open_clip_available():
            raise ImportError("OpenCLIPReward needs open_clip with a working torchvision "
                              "(pip install open-clip-torch torchvision matching your torch); CLIPReward needs neither")
        import open_clip

        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
        size = model.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        mean = getattr(model.visual, "image_mean", None) or OPENAI_MEAN
        std = getattr(model.visual, "image_std", None) or OPENAI_STD
        return cls(model, open_clip.get_tokenizer(name), size, mean, std)

    def _image_features(self, pixels):
        x = clip_preprocess(pixels.to(self._device()), self.image_size, self.mean, self.std)
        return self.model.encode_image(x)

    def _text_features(self, prompts):
        return self.model.encode_text(self.tokenizer(prompts).to(self._device()))


class AestheticHead(nn.Module):
    """The LAION improved-aesthetic-predictor MLP (Schuhmann, 2022) over unit-norm CLIP image embeddings.

    Layout (and state-dict keys layers.{0,2,4,6,7}) as the released sac+logos+ava1-l14-linearMSE head on CLIP
    ViT-L/14 (embed_dim 768); convert its .pth to safetensors once to load it here. Dropout is off in eval.
    """

    def __init__(self, embed_dim: int = 768, hidden: tuple[int, int, int, int] = (1024, 128, 64, 16)):
        super().__init__()
        h1, h2, h3, h4 = hidden
        self.layers = nn.Sequential(nn.Linear(embed_dim, h1), nn.Dropout(0.2), nn.Linear(h1, h2), nn.Dropout(0.2),
                                    nn.Linear(h2, h3), nn.Dropout(0.1), nn.Linear(h3, h4), nn.Linear(h4, 1))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.layers(emb).squeeze(-1)  # (B, D) -> (B,)

    @classmethod
    def from_safetensors(cls, path: str, embed_dim: int = 768) -> AestheticHead:
        from safetensors.torch import load_file

        head = cls(embed_dim)
        head.load_state_dict(load_file(path))
        return head.eval()


class AestheticReward:
    """LAION-style aesthetic score (about 1-10 for the released head) of images, from a CLIP embedder + head.

    score(samples, prompts): samples (B, 3, H, W) float in [0, 1] -> (B,); prompts are ignored.
    """

    reads: Literal["pixels", "latents"] = "pixels"

    def __init__(self, embedder: CLIPEmbedder, head: AestheticHead):
        self.embedder, self.head = embedder, head.eval()

    def score(self, samples: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_pixels(samples, type(self).__name__)
        emb = self.embedder.embed_images(samples)
        return self.head(emb.to(next(self.head.parameters()).dtype))
