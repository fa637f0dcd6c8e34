"""Yes/no verification of shapes-world images: the requirement grammar, the exact oracle, the learned verifier.

A shapes prompt decomposes into atomic *requirements*, each with a yes/no question in a small fixed grammar
("is there a red circle?", "are there exactly three triangles?", "is there a circle left of a square?", "are there
exactly two objects?"). A *verifier* answers such a question about an image with P(yes): the role
NVILA-Lite-Verifier plays for RAISE (Jiang et al., arXiv 2603.00483) and a VLM judge plays elsewhere.

Two verifiers speak this grammar:
- `ExactVerifier`: the programmatic checker of accel.shapes answering each question exactly (probabilities 0 or 1).
  It is an *oracle*: a search scored by it and judged by the same checker is a perfect selector, which is not how
  search runs at a user's site. Use it for CI and as the reference.
- `ShapesVerifier`: a small learned image + text model (a CNN image encoder, a word-embedding text encoder, FiLM
  fusion) trained by scripts/train_verifier.py on renders and model samples labelled by the checker. It is
  imperfect the way real verifiers are; its disagreement with the checker is measured per tag.
`VerifierReward` turns either into a Reward (`reward="shapes-verifier"`): P(yes) for the whole prompt, or the
product over the prompt's requirements.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch

from accel.rewards.base import check_pixels, to_uint8
from accel.shapes import COLORS, RELATIONS, SHAPES, check, detect

# image (3, H, W) float in [0, 1], question -> P(yes) in [0, 1]
Verifier = Callable[[torch.Tensor, str], float]

_WORD = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_NUMBER = {w: n for n, w in _WORD.items()}


@dataclass(frozen=True)
class Requirement:
    """One atomic requirement of a prompt.

    text: what is required ("a red circle"); question: the yes/no question that checks it; prompt: a grammar
    prompt asking for this requirement alone (an emphasis / edit prompt, e.g. "a photo of a red circle");
    clause: the GenEval metadata that the exact checker answers the question with ({"objects": n} for the count
    of all objects).
    """

    text: str
    question: str
    prompt: str
    clause: dict


def _obj_text(req: dict) -> str:
    color = f"{req['color']} " if "color" in req else ""
    return f"{'an' if (color or req['class'])[0] in 'aeiou' else 'a'} {color}{req['class']}"


def requirements(metadata: dict, strict: bool = True) -> list[Requirement]:
    """The atomic requirements of a shapes prompt's GenEval metadata (accel.shapes.make_metadata's format).

    One per object clause (a position clause asks for the relation), one for a count (include n + exclude n + 1
    read together: "exactly n"), and with `strict` one for the total number of objects (the checker's strict rule).

    Raises:
        ValueError: the metadata has no include clause (nothing to verify).
    """
    include = metadata.get("include") or []
    if not include:
        raise ValueError(f"no requirements in the metadata of {metadata.get('prompt')!r}: it has no include clause")
    out = []
    for req in include:
        if "position" in req:
            rel, target = req["position"]
            other = _obj_text(include[target])
            text = f"{_obj_text(req)} {rel} {other}"
            clause = {"include": [include[target], req]}
            out.append(Requirement(text, f"is there {text}?", f"a photo of {text}", clause))
        elif req["count"] > 1:
            n, shape = _WORD[req["count"]], req["class"]
            excl = [e for e in metadata.get("exclude", []) if e["class"] == shape]
            clause = {"include": [req], "exclude": excl}
            exact = "exactly " if excl else ""
            out.append(Requirement(f"{exact}{n} {shape}s", f"are there {exact}{n} {shape}s?",
                                   f"a photo of {n} {shape}s", clause))
        else:
            text = _obj_text(req)
            out.append(Requirement(text, f"is there {text}?", f"a photo of {text}", {"include": [req]}))
    if strict:
        total = sum(r["count"] for r in include)
        text = f"exactly {_WORD[total]} object{'s' if total > 1 else ''}"
        out.append(Requirement(text, f"{'are' if total > 1 else 'is'} there {text}?",
                               metadata.get("prompt", ""), {"objects": total}))
    return out


_SHAPE = "|".join(SHAPES)
_COLOR = "|".join(COLORS)
_Q_OBJECT = re.compile(rf"is there an? (?:({_COLOR}) )?({_SHAPE})\?")
_Q_RELATION = re.compile(rf"is there an? ({_SHAPE}) ({'|'.join(RELATIONS)}) an? ({_SHAPE})\?")
_Q_COUNT = re.compile(rf"are there (exactly )?({'|'.join(_WORD.values())}) ({_SHAPE})s\?")
_Q_OBJECTS = re.compile(rf"(?:are|is) there exactly ({'|'.join(_WORD.values())}) objects?\?")


def question_clause(question: str) -> dict:
    """The checker metadata a grammar question asks about (the inverse of `requirements`); a shapes prompt
    ("a photo of ...") asks whether the whole prompt holds, strictly.

    Raises:
        ValueError: the question is not in the grammar.
    """
    from accel.rewards.shapes import parse_shapes_prompt

    q = " ".join(question.lower().split())
    if m := _Q_RELATION.fullmatch(q):
        a, rel, b = m.groups()
        return {"include": [{"class": b, "count": 1}, {"class": a, "count": 1, "position": [rel, 0]}]}
    if m := _Q_OBJECT.fullmatch(q):
        color, shape = m.groups()
        return {"include": [{"class": shape, "count": 1, **({"color": color} if color else {})}]}
    if m := _Q_COUNT.fullmatch(q):
        exact, n, shape = m.groups()
        n = _NUMBER[n]
        return {"include": [{"class": shape, "count": n}],
                "exclude": [{"class": shape, "count": n + 1}] if exact else []}
    if m := _Q_OBJECTS.fullmatch(q):
        return {"objects": _NUMBER[m.group(1)]}
    if q.startswith("a photo of"):
        return parse_shapes_prompt(q) | {"strict": True}
    raise ValueError(f"{question!r} is not a shapes verification question; they read like 'is there a red circle?', "
                     "'are there exactly three triangles?', 'is there a circle left of a square?', 'are there "
                     "exactly two objects?', or a shapes prompt")


def exact_answer(image: np.ndarray, clause: dict) -> bool:
    """The checker's answer for one (H, W, 3) uint8 image and one clause of `question_clause`."""
    if "objects" in clause:
        return len(detect(image)) == clause["objects"]
    return check(image, clause, strict=bool(clause.get("strict"))).correct


class ExactVerifier:
    """The exact oracle: the shapes checker answers each question (P(yes) is 0 or 1).

    Not a learned verifier: with it, a search's reward and its judge are the same program. Use it in CI and as
    the reference the learned one is measured against.
    """

    oracle = True

    def __call__(self, image: torch.Tensor, question: str) -> float:
        return float(self.probabilities(image[None], [question])[0])

    def probabilities(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """P(yes) (B,) for images (B, 3, H, W) in [0, 1] and one question each."""
        check_pixels(images, type(self).__name__)
        arr = to_uint8(images).numpy()
        return torch.tensor([float(exact_answer(a, question_clause(q))) for a, q in zip(arr, questions)])


class VerifierReward:
    """A Reward from a yes/no verifier of the shapes grammar.

    Args:
        verifier: anything with `probabilities(images (B, 3, H, W), questions) -> (B,)` (ShapesVerifier,
            ExactVerifier).
        mode: "prompt": P(yes) asked of the whole prompt; "product": the product of P(yes) over the prompt's
            requirements (accel.rewards.verifier.requirements, strict).
        metadata: prompt -> GenEval metadata for prompts outside the grammar (others are parsed).

    score(samples (B, 3, H, W) in [0, 1], prompts) -> (B,) float32 in [0, 1].
    """

    reads: Literal["pixels", "latents"] = "pixels"

    def __init__(self, verifier, mode: str = "product", metadata: dict[str, dict] | None = None):
        if mode not in ("prompt", "product"):
            raise ValueError(f"unknown verifier reward mode {mode!r}; allowed: prompt, product")
        self.verifier, self.mode = verifier, mode
        self.metadata = dict(metadata or {})

    def questions(self, prompt: str) -> list[str]:
        if self.mode == "prompt":
            return [prompt]
        from accel.rewards.shapes import parse_shapes_prompt

        meta = self.metadata.get(prompt) or parse_shapes_prompt(prompt)
        return [r.question for r in requirements(meta)]

    def score(self, samples: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        check_pixels(samples, type(self).__name__)
        asks = [self.questions(p) for p in prompts]
        index = torch.tensor([i for i, qs in enumerate(asks) for _ in qs])
        flat = [q for qs in asks for q in qs]
        probs = self.verifier.probabilities(samples[index], flat).float().cpu()
        return torch.stack([probs[index == i].prod() for i in range(len(prompts))])


# --- the learned verifier -----------------------------------------------------------------------------------------

# Words of the shapes prompts and of the question grammar; anything else maps to <unk>.
VOCAB = ("<pad> <unk> a an the photo of and is are there exactly one two three four five six object objects "
         "circle circles square squares triangle triangles red green blue yellow left right above below").split()
MAX_WORDS = 16
DEFAULT_FOLDER = "shapes-verifier"


def tokenize(texts: list[str], max_words: int = MAX_WORDS) -> torch.Tensor:
    """Word ids (B, max_words) of lower-cased texts, punctuation dropped, padded with 0 (<pad>)."""
    index = {w: i for i, w in enumerate(VOCAB)}
    out = torch.zeros(len(texts), max_words, dtype=torch.long)
    for row, text in enumerate(texts):
        words = re.sub(r"[^a-z ]", " ", text.lower()).split()[:max_words]
        out[row, :len(words)] = torch.tensor([index.get(w, 1) for w in words], dtype=torch.long)
    return out


@dataclass(frozen=True)
class VerifierConfig:
    """Sizes of ShapesVerifier (saved as config.json beside model.safetensors)."""

    image_size: int = 32
    channels: tuple[int, ...] = (16, 32, 64)
    text_dim: int = 64
    text_layers: int = 2
    heads: int = 4
    relation_slots: int = 0  # 0: pooled image features only; k: k text-queried spatial attention slots (see below)


class ShapesVerifier(torch.nn.Module):
    """P(yes) for (image, question) pairs of the shapes world: a small image + text yes/no model.

    Text: word embeddings + positions through a small transformer encoder, mean-pooled over words (word order
    matters: "a circle left of a square" is not "a square left of a circle"). Image: a CNN over RGB plus two
    coordinate channels (positions are what relations ask about), each stage modulated by the text (FiLM, Perez et
    al. 2018) so that the question picks what the image features look for; mean- and max-pooled, then an MLP to one
    logit. With `relation_slots` k > 0, k slots each attend over the question's words (a learned query: e.g. the
    subject, the object) and then over the last feature map, adding the attended features and the attention's
    centroid (x, y) per slot and the slots' centroid differences: pooled features cannot say which object is left
    of which. About 0.1 M parameters; trains on a CPU (scripts/train_verifier.py).

    forward(images (B, 3, H, W) in [0, 1], ids (B, T)) -> logits (B,); probabilities(images, texts) -> (B,).
    """

    def __init__(self, config: VerifierConfig | None = None):
        super().__init__()
        from torch import nn

        self.config = cfg = config or VerifierConfig()
        d = cfg.text_dim
        self.embed = nn.Embedding(len(VOCAB), d, padding_idx=0)
        self.position = nn.Parameter(torch.zeros(MAX_WORDS, d))
        layer = nn.TransformerEncoderLayer(d, cfg.heads, 2 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.text = nn.TransformerEncoder(layer, cfg.text_layers, enable_nested_tensor=False)
        convs, films, cin = [], [], 5  # RGB + (x, y)
        for k, cout in enumerate(cfg.channels):
            convs.append(nn.Sequential(nn.Conv2d(cin, cout, 3, stride=1 if k == 0 else 2, padding=1),
                                       nn.GroupNorm(8, cout), nn.SiLU(),
                                       nn.Conv2d(cout, cout, 3, padding=1), nn.GroupNorm(8, cout)))
            films.append(nn.Linear(d, 2 * cout))
            cin = cout
        self.convs, self.films = nn.ModuleList(convs), nn.ModuleList(films)
        k = cfg.relation_slots
        if k:
            self.slot_queries = nn.Parameter(torch.randn(k, d) / d ** 0.5)  # attend over the question's words
            self.slot_keys = nn.Linear(cin, d)  # image features -> keys for the slots' spatial attention
        extra = k * (cin + 2) + k * (k - 1)  # per slot: features + centroid; per slot pair: centroid difference
        self.head = nn.Sequential(nn.Linear(2 * cin + d + extra, 128), nn.SiLU(), nn.Linear(128, 1))

    def encode_words(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-word features (B, T, d) and the padding mask (B, T)."""
        pad = ids == 0
        return self.text(self.embed(ids) + self.position[: ids.shape[1]], src_key_padding_mask=pad), pad

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return _mean_words(*self.encode_words(ids))  # (B, d)

    def _slots(self, h: torch.Tensor, words: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Relation features (B, k (C + 2) + k (k - 1)) of the feature map h (B, C, S, S) for the question."""
        d = words.shape[-1]
        w = torch.einsum("btd,kd->bkt", words, self.slot_queries).masked_fill(pad[:, None], float("-inf"))
        queries = torch.einsum("bkt,btd->bkd", w.softmax(-1), words)  # (B, k, d): e.g. the subject, the object
        flat = h.flatten(2).transpose(1, 2)  # (B, N, C)
        a = (torch.einsum("bnd,bkd->bkn", self.slot_keys(flat), queries) / d ** 0.5).softmax(-1)  # (B, k, N)
        centroids = a @ _coords(h.shape[-1]).to(h).flatten(1).T  # (B, k, 2): attention-weighted (x, y)
        k = centroids.shape[1]
        diffs = [centroids[:, i] - centroids[:, j] for i in range(k) for j in range(i + 1, k)]
        return torch.cat([(a @ flat).flatten(1), centroids.flatten(1), *diffs], dim=1)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        import torch.nn.functional as F

        size = self.config.image_size
        x = images.float()
        if x.shape[-2:] != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        b = x.shape[0]
        coords = _coords(size).to(x).expand(b, 2, size, size)
        h = torch.cat([x * 2 - 1, coords], dim=1)  # (B, 5, S, S)
        words, pad = self.encode_words(ids.to(x.device))
        t = _mean_words(words, pad)  # (B, d)
        for conv, film in zip(self.convs, self.films):
            gamma, beta = film(t).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
            h = F.silu(conv(h) * (1 + gamma) + beta)
        parts = [h.mean(dim=(2, 3)), h.amax(dim=(2, 3)), t]
        if self.config.relation_slots:
            parts.append(self._slots(h, words, pad))
        pooled = torch.cat(parts, dim=1)
        return self.head(pooled).squeeze(-1)  # (B,)

    @torch.no_grad()
    def probabilities(self, images: torch.Tensor, questions: list[str]) -> torch.Tensor:
        """P(yes) (B,) float32 on CPU for images (B, 3, H, W) in [0, 1] and one question (or prompt) each."""
        check_pixels(images, type(self).__name__)
        device = next(self.parameters()).device
        return torch.sigmoid(self(images.to(device), tokenize(questions))).float().cpu()

    def __call__(self, *args, **kwargs):
        # Called as a Verifier (one image, one question) or as a module (images, ids).
        if len(args) == 2 and isinstance(args[1], str):
            return float(self.probabilities(args[0][None], [args[1]])[0])
        return super().__call__(*args, **kwargs)

    def save_pretrained(self, folder: str | Path) -> None:
        """config.json + model.safetensors."""
        import json
        from dataclasses import asdict

        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(asdict(self.config) | {"vocab": VOCAB}, indent=1))
        save_file({k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()},
                  str(folder / "model.safetensors"))

    @classmethod
    def from_pretrained(cls, folder: str | Path | None = None, device: str | None = None) -> ShapesVerifier:
        """Load from a folder (default: the built-in one, accel.assets/shapes-verifier, once trained)."""
        import json

        from safetensors.torch import load_file

        folder = Path(folder) if folder is not None else default_verifier_path()
        if not (folder / "model.safetensors").is_file():
            raise FileNotFoundError(f"no shapes verifier at {folder} (config.json + model.safetensors); train one "
                                    "with scripts/train_verifier.py")
        meta = json.loads((folder / "config.json").read_text())
        if meta.pop("vocab", list(VOCAB)) != list(VOCAB):
            raise ValueError(f"the verifier at {folder} was trained with another vocabulary")
        model = cls(VerifierConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in meta.items()}))
        model.load_state_dict(load_file(str(folder / "model.safetensors")))
        return model.to(device or "cpu").eval()


def _coords(size: int) -> torch.Tensor:
    """(x, y) in [-1, 1] of each pixel of a size x size map: (2, size, size)."""
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    return torch.stack([xs, ys])


def _mean_words(words: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
    """Mean of the per-word features (B, T, d) over the words that are not padding (pad: (B, T))."""
    keep = (~pad).unsqueeze(-1).float()
    return (words * keep).sum(1) / keep.sum(1).clamp(min=1)


def default_verifier_path() -> Path:
    """Where the built-in learned verifier lives (accel.assets/shapes-verifier)."""
    import importlib

    return Path(importlib.import_module("accel.assets").__file__).parent / DEFAULT_FOLDER
