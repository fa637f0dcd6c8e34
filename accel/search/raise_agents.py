"""RAISE's agents behind one small interface, and the offline agent of the shapes world.

RAISE (Jiang et al., arXiv 2603.00483) has three language roles around the generator: the *analyzer* splits the
prompt into atomic requirements (with one yes/no question each) and says which the current best image meets; the
*rewriter* turns the unmet ones into an adjusted generation prompt and, from round K_min + 1 on, into edit
instructions; the *verifier* answers the questions about one image. `Agent` is those three methods; the RAISE loop
(accel.search.raise_) counts every call and its seconds.

Implementations: `ShapesAgent` (here: offline, exact grammar, runs in CI and in the benchmark) and `VLMAgent`
(accel.search.raise_vlm: an OpenAI-compatible chat endpoint or a local transformers VLM).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import torch

from accel.rewards.verifier import ExactVerifier, Requirement, Verifier, requirements


@dataclass
class Verdict:
    """The verifier's answers about one image: P(yes) per question (aligned with Analysis.questions)."""

    answers: list[float]
    all_satisfied: bool
    explanations: list[str] = field(default_factory=list)
    threshold: float = 0.5  # P(yes) from which a question counts as answered yes (RAISEConfig.verified)

    @property
    def failed(self) -> list[int]:
        """Indices of the questions not answered yes."""
        return [i for i, p in enumerate(self.answers) if p < self.threshold]


@dataclass
class Analysis:
    """The analyzer's view of the prompt and of the current best image.

    requirements: atomic requirement sentences; questions: one yes/no question each; unsatisfied: indices of the
    requirements not met yet (all of them before anything was verified); ending: the analyzer judges that what
    remains unmet is minor and refinement may stop (honoured only after K_min rounds).
    """

    requirements: list[str]
    questions: list[str]
    unsatisfied: list[int]
    ending: bool = False


@dataclass
class Rewrite:
    """The rewriter's output: an adjusted generation prompt and edit prompts, most important first
    (edits[0]: the single top-1 edit; edits[1]: the comprehensive one; the rest: other planned edits)."""

    prompt: str
    edits: list[str] = field(default_factory=list)


@runtime_checkable
class Agent(Protocol):
    """The three roles. `image` is one (3, H, W) float tensor in [0, 1] (None before the first round);
    `verdict` the verifier's answers about it."""

    def analyze(self, prompt: str, image: torch.Tensor | None, verdict: Verdict | None) -> Analysis: ...

    def rewrite(self, prompt: str, analysis: Analysis, editing: bool) -> Rewrite: ...

    def verify(self, image: torch.Tensor, analysis: Analysis) -> Verdict: ...


class ShapesAgent:
    """The offline agent of the shapes world: requirements from the prompt's GenEval metadata, answers from a
    pluggable yes/no verifier, rewrites within the prompt grammar.

    The built-in model knows one wording per prompt template, so the rewrites are the grammar's own:
    - equivalent restatements: "a red circle and a blue square" <-> "a blue square and a red circle";
      "a circle left of a square" <-> "a square right of a circle";
    - emphasis by order: the object whose requirement failed is named first;
    - a failed requirement split into its own clause: its own prompt ("a photo of a blue square") is the single
      top-1 edit, and each other failed requirement's prompt another planned edit.
    Templates with one object or one count have no other wording: their adjusted prompt is the prompt itself, so
    the "rewritten" candidates are noise resampling (and the edits still help).

    Args:
        verifier: image (3, H, W), question -> P(yes). Default: ExactVerifier(), the exact checker as an oracle
            (CI); pass accel.rewards.ShapesVerifier (learned) to run the way a user would.
        metadata: prompt -> GenEval metadata for prompts outside the grammar (others are parsed).
        strict: also require "exactly n objects" (the checker's strict rule).
    """

    def __init__(self, verifier: Verifier | None = None, metadata: dict[str, dict] | None = None,
                 strict: bool = True):
        self.verifier = verifier if verifier is not None else ExactVerifier()
        if not callable(self.verifier):
            raise ValueError("verifier must be callable: verifier(image (3, H, W) in [0, 1], question) -> P(yes)")
        self.metadata = dict(metadata or {})
        self.strict = strict

    def metadata_for(self, prompt: str) -> dict:
        from accel.rewards.shapes import parse_shapes_prompt

        if prompt in self.metadata:
            return self.metadata[prompt]
        try:
            return parse_shapes_prompt(prompt)
        except ValueError as e:
            raise ValueError(f"the offline shapes agent cannot find requirements in this prompt: {e}") from None

    def requirements(self, prompt: str) -> list[Requirement]:
        return requirements(self.metadata_for(prompt), strict=self.strict)

    def analyze(self, prompt: str, image: torch.Tensor | None, verdict: Verdict | None) -> Analysis:
        reqs = self.requirements(prompt)
        unsatisfied = list(range(len(reqs))) if verdict is None else verdict.failed
        return Analysis([r.text for r in reqs], [r.question for r in reqs], unsatisfied,
                        ending=verdict is not None and verdict.all_satisfied)

    def verify(self, image: torch.Tensor, analysis: Analysis) -> Verdict:
        answers = [float(self.verifier(image, q)) for q in analysis.questions]
        for q, p in zip(analysis.questions, answers):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"the verifier must return a probability in [0, 1], got {p!r} for {q!r}")
        return Verdict(answers, all(p >= 0.5 for p in answers))

    def rewrite(self, prompt: str, analysis: Analysis, editing: bool) -> Rewrite:
        meta = self.metadata_for(prompt)
        reqs = self.requirements(prompt)
        failed = [reqs[i] for i in analysis.unsatisfied if i < len(reqs)]
        adjusted = restate(meta, failed)
        if not editing:
            return Rewrite(adjusted)
        # Object requirements first (an edit asks for something to appear); the object count last.
        own = [r.prompt for r in failed if "objects" not in r.clause] or [adjusted]
        edits = [own[0], adjusted, *own[1:]]
        return Rewrite(adjusted, edits)


def restate(metadata: dict, failed: list[Requirement]) -> str:
    """An equivalent restatement of a shapes prompt in the grammar, naming a failed object first."""
    include, prompt = metadata["include"], metadata["prompt"]
    tag = metadata.get("tag")
    if tag == "position" or any("position" in r for r in include):
        b, a = include
        inverse = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
        return f"a photo of a {b['class']} {inverse[a['position'][0]]} a {a['class']}"
    if len(include) == 2 and all(r["count"] == 1 for r in include):
        first, second = include
        failed_clauses = [r.clause.get("include", [None])[0] for r in failed]
        if first in failed_clauses and second not in failed_clauses:
            return prompt  # the failed object is named first already
        return f"a photo of {_name(second)} and {_name(first)}"
    return prompt


def _name(req: dict) -> str:
    color = f"{req['color']} " if "color" in req else ""
    return f"a {color}{req['class']}"
