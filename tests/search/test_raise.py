"""RAISE on a tiny random shapes model: the population schedule, the accounting, stopping, SDEdit edits, an
external editor, interruption and bad input."""

import pytest
import torch

from accel import accelerate_pipeline
from accel.search.raise_ import RAISEConfig, RefineInterrupted, refine
from accel.search.raise_agents import Analysis, Rewrite, ShapesAgent, Verdict
from accel.search.registry import get_config, search

from conftest import MeanPixel

PROMPT = "a photo of a red circle and a blue square"
CALL = {"prompt": PROMPT, "num_inference_steps": 4}
SAMPLE = 4 * 2  # one sample: 4 steps x 2 (CFG)


def run(denoiser, nfe, config="raise:population=4:originals=2", agent=None, seed=0, **kw):
    return refine(denoiser, CALL, MeanPixel(), config, nfe, agent or ShapesAgent(), generator=torch.Generator()
                  .manual_seed(seed), **kw)


class NeverSatisfied(ShapesAgent):
    """The offline agent with a verifier that always says no: RAISE runs all its rounds."""

    def __init__(self, **kw):
        super().__init__(verifier=lambda image, question: 0.0, **kw)


def test_population_schedule_and_accounting(denoiser):
    result = run(denoiser, 4 * 4 * SAMPLE, "raise:population=4:originals=2:edits=3", agent=NeverSatisfied())
    trace = result.trace
    rows = trace.steps
    assert [r["round"] for r in rows] == [1, 2, 3, 4] and trace.extra["stop"] == "rounds"
    # Rounds <= k_min: originals of the user's prompt + rewritten prompts; then edits of the best + rewrites.
    assert [(r["resample"], r["rewrite"], r["edit"]) for r in rows] == [(2, 2, 0), (2, 2, 0), (0, 1, 3), (0, 1, 3)]
    assert rows[0]["prompts"] == sorted([PROMPT, "a photo of a blue square and a red circle"])
    assert "a photo of a blue square" in rows[2]["prompts"]  # the failed requirement as its own clause
    # Edits re-noise to sigma <= 0.6 and pay only the remaining steps: rounds 3 and 4 cost less than a full round.
    costs = [b["nfe"] - a["nfe"] for a, b in zip([{"nfe": 0}] + rows, rows)]
    assert costs[:2] == [4 * SAMPLE] * 2 and all(c < 4 * SAMPLE for c in costs[2:])
    assert trace.nfe == rows[-1]["nfe"] <= trace.budget
    # The verifier runs once per round (on the round's best), the analyzer and the rewriter once each.
    assert trace.extra["verifier_calls"] == 4 and trace.extra["agent_calls"] == 8
    assert rows[-1]["verifier_calls"] == 4 and trace.reward_calls == len(result.candidates) == 16
    assert set(trace.extra["seconds_by_role"]) >= {"agent", "verifier", "fitness", "generator"}


def test_global_best_is_kept(denoiser):
    result = run(denoiser, 4 * 4 * SAMPLE, agent=NeverSatisfied())
    fitness = torch.tensor([c["fitness"] for c in result.candidates])
    assert result.fitness[0] == fitness.max() and torch.equal(result.fitness, fitness)
    assert torch.all(result.fitness[:-1] >= result.fitness[1:])
    best = result.trace.rewards
    assert all(b >= a for a, b in zip(best, best[1:])) and best[-1] == float(result.fitness[0])
    # The returned image is the best's, and its latent decodes to it.
    assert torch.allclose(result.trace.extra["best_image"], result.best)
    assert float(MeanPixel().score(result.best, [PROMPT])[0]) == pytest.approx(float(result.fitness[0]), abs=1e-6)


def test_same_seed_same_result(denoiser):
    a, b = run(denoiser, 3 * 4 * SAMPLE, seed=3), run(denoiser, 3 * 4 * SAMPLE, seed=3)
    assert torch.equal(a.images, b.images) and a.candidates == b.candidates


def test_stops_when_the_global_best_is_verified(denoiser):
    yes = ShapesAgent(verifier=lambda image, question: 1.0)
    result = run(denoiser, 4 * 4 * SAMPLE, agent=yes)
    assert result.trace.extra["stop"] == "verified" and result.trace.extra["rounds"] == 2  # K_min = 2
    assert result.trace.extra["verifier_calls"] == 2 and result.trace.extra["best_verified"]


def test_a_stricter_verified_threshold_keeps_refining(denoiser):
    unsure = ShapesAgent(verifier=lambda image, question: 0.7)  # a learned verifier's lukewarm yes
    assert run(denoiser, 4 * 4 * SAMPLE, agent=unsure).trace.extra["stop"] == "verified"
    strict = run(denoiser, 4 * 4 * SAMPLE, "raise:population=4:originals=2:edits=3:verified=0.8", agent=unsure)
    rows = strict.trace.steps
    assert strict.trace.extra["stop"] == "rounds" and not strict.trace.extra["best_verified"]
    assert rows[2]["edit"] == 3 and "a photo of a blue square" in rows[2]["prompts"]  # every requirement unmet
    sure = ShapesAgent(verifier=lambda image, question: 0.9)
    assert run(denoiser, 4 * 4 * SAMPLE, "raise:population=4:originals=2:verified=0.8",
               agent=sure).trace.extra["rounds"] == 2


class Ending(NeverSatisfied):
    def analyze(self, prompt, image, verdict):
        return Analysis(**{**super().analyze(prompt, image, verdict).__dict__, "ending": True})


def test_analyzer_may_end_after_k_min(denoiser):
    result = run(denoiser, 4 * 4 * SAMPLE, agent=Ending())
    assert result.trace.extra["stop"] == "analyzer" and result.trace.extra["rounds"] == 2
    assert result.trace.extra["agent_calls"] == 5  # 2 x (analyze + rewrite) + the analyze that ended


def test_budget_cuts_the_last_round(denoiser):
    result = run(denoiser, 4 * SAMPLE + 2 * SAMPLE, agent=NeverSatisfied())  # one round and half of the next
    rows = result.trace.steps
    assert [r["candidates"] for r in rows] == [4, 2] and result.trace.nfe == 6 * SAMPLE
    assert result.trace.extra["stop"] == "budget"


def test_sdedit_edits_stay_near_their_parent(denoiser):
    """A weak edit (re-noised to sigma <= 0.3) changes the parent far less than a fresh sample differs from it."""
    result = run(denoiser, 3 * 4 * SAMPLE, "raise:population=4:originals=2:k_min=2:k_max=3:edits=3:edit_strength=0.3",
                 agent=NeverSatisfied())
    parent = max((c for c in zip(result.candidates, result.images) if c[0]["round"] <= 2),
                 key=lambda c: c[0]["fitness"])[1]
    edits = [im for c, im in zip(result.candidates, result.images) if c["kind"] == "edit"]
    fresh = [im for c, im in zip(result.candidates, result.images) if c["round"] <= 2]
    edit_dist = max(float((e - parent).abs().mean()) for e in edits)
    fresh_dist = sorted(float((f - parent).abs().mean()) for f in fresh)[1]  # [0] is the parent itself
    assert len(edits) == 3 and edit_dist < 0.5 * fresh_dist


class Inverter:
    """An external editor: inverts the image; reports 7 NFE per edit."""

    def __init__(self):
        self.calls = []

    def edit(self, image, prompt, generator):
        self.calls.append(prompt)
        return 1 - image, 7


def test_external_editor(denoiser):
    editor = Inverter()
    result = run(denoiser, 4 * 4 * SAMPLE, agent=NeverSatisfied(), editor=editor)
    extra = result.trace.extra
    assert extra["editor_calls"] == len(editor.calls) == 4 and extra["editor_nfe"] == 28
    # Its edits cost the generator nothing: rounds 3 and 4 only pay for their two rewritten samples each.
    assert result.trace.nfe == (4 + 4 + 2 + 2) * SAMPLE
    if result.candidates[0]["kind"] == "edit":
        assert result.latent is None


class BrokenVerifier(NeverSatisfied):
    def __init__(self, fail_round, error):
        super().__init__()
        self.round, self.fail_round, self.error = 0, fail_round, error

    def verify(self, image, analysis):
        self.round += 1
        if self.round == self.fail_round:
            raise self.error
        return super().verify(image, analysis)


@pytest.mark.parametrize("error", [TimeoutError("endpoint timed out"), KeyboardInterrupt()])
def test_interrupted_run_keeps_its_best(denoiser, error):
    with pytest.raises(RefineInterrupted, match="round 2") as info:
        run(denoiser, 4 * 4 * SAMPLE, agent=BrokenVerifier(2, error))
    partial = info.value.result
    assert isinstance(info.value.__cause__, type(error))
    assert partial.trace.extra["stop"] == "interrupted" and len(partial.candidates) == 8
    assert partial.fitness[0] == partial.fitness.max() and partial.trace.nfe == 8 * SAMPLE
    # Round 1's verified best is still there, and the trace holds the best image so far.
    assert partial.trace.extra["best_image"].shape == (1, 3, 32, 32)


def test_bad_input(denoiser, tiny_pipe):
    with pytest.raises(ValueError, match="below one RAISE round"):
        run(denoiser, 4 * SAMPLE - 1)
    for strength in (0, 1, 1.5, -0.2):
        with pytest.raises(ValueError, match=r"edit_strength must be a number in \(0, 1\)"):
            RAISEConfig(edit_strength=strength)
    with pytest.raises(ValueError, match="edit_strength"):
        get_config("raise:edit_strength=1.0")
    with pytest.raises(ValueError, match="k_min"):
        RAISEConfig(k_min=5, k_max=4)
    for bad in (0, 1.5, "high"):
        with pytest.raises(ValueError, match=r"verified must be a probability in \(0, 1\]"):
            RAISEConfig(verified=bad)
    with pytest.raises(ValueError, match="cannot find requirements"):
        refine(denoiser, {"prompt": "a cat on a mat", "num_inference_steps": 4}, MeanPixel(), "raise", 10_000,
               ShapesAgent())
    with pytest.raises(ValueError, match="refine"):
        search(denoiser, None, PROMPT, MeanPixel(), "raise", 100)
    with pytest.raises(ValueError, match="analyze, rewrite and verify"):
        run(denoiser, 4 * SAMPLE, agent=object())

    class WrongVerdict(ShapesAgent):
        def verify(self, image, analysis):
            return [True]

    with pytest.raises(RefineInterrupted) as info:
        run(denoiser, 4 * SAMPLE, agent=WrongVerdict())
    assert isinstance(info.value.__cause__, ValueError) and "Verdict" in str(info.value)


def test_pipeline_option(tiny_pipe):
    pipe = accelerate_pipeline(tiny_pipe)
    out = pipe(PROMPT, num_inference_steps=4, refine="raise:population=4:originals=2", nfe=8 * SAMPLE,
               generator=torch.Generator().manual_seed(0), output_type="pt")
    assert out.images.shape == (1, 3, 32, 32) and out.stats.nfe <= 8 * SAMPLE
    assert out.stats.extra["refine"] == "raise" and out.stats.extra["verifier_calls"] >= 1
    with pytest.raises(ValueError, match="agent= and editor= go with refine="):
        pipe(PROMPT, num_inference_steps=4, agent=ShapesAgent())
    with pytest.raises(ValueError, match="does not combine"):
        pipe(PROMPT, num_inference_steps=4, refine="raise", search="bon", nfe=100)
    with pytest.raises(ValueError, match="nfe"):
        pipe(PROMPT, num_inference_steps=4, refine="raise")


class Echo:
    """A minimal agent of the interface (not the shapes one): one requirement, the prompt kept."""

    def analyze(self, prompt, image, verdict):
        return Analysis(["a thing"], ["is there a thing?"], [0])

    def rewrite(self, prompt, analysis, editing):
        return Rewrite(prompt, [prompt, prompt] if editing else [])

    def verify(self, image, analysis):
        return Verdict([0.2], False)


def test_any_agent_of_the_interface(denoiser):
    result = run(denoiser, 3 * 4 * SAMPLE, "raise:population=4:originals=2:k_max=3", agent=Echo())
    assert result.trace.extra["rounds"] == 3 and {c["prompt"] for c in result.candidates} == {PROMPT}


def test_small_populations_keep_the_schedule_shape(denoiser):
    """population=2 alone is valid: half of it originals, and after k_min one edit (the paper's 3 of 8, rounded)
    and one fresh sample of the adjusted prompt; edits=2 makes both edits (top-1, comprehensive)."""
    result = run(denoiser, 4 * 2 * SAMPLE, "raise:population=2", agent=NeverSatisfied())
    rows = result.trace.steps
    assert [(r["resample"], r["rewrite"], r["edit"]) for r in rows] == [(1, 1, 0), (1, 1, 0), (0, 1, 1), (0, 1, 1)]
    result = run(denoiser, 4 * 2 * SAMPLE, "raise:population=2:edits=2", agent=NeverSatisfied())
    assert [r["edit"] for r in result.trace.steps] == [0, 0, 2, 2]
    assert RAISEConfig().population == 8 and RAISEConfig().originals is None  # the paper's 4 + 4
    assert [RAISEConfig(population=p).edits_per_round for p in (1, 2, 4, 8, 16)] == [0, 1, 2, 3, 3]
    with pytest.raises(ValueError, match="edits"):
        RAISEConfig(edits=4)
    with pytest.raises(ValueError, match="originals"):
        RAISEConfig(population=2, originals=3)


class FakeEditPipeline:
    """A diffusers-like edit pipeline: a transformer called twice per edit (counted), images out in [0, 1]."""

    def __init__(self):
        self.transformer = torch.nn.Identity()
        self.calls = []

    def __call__(self, image, prompt, generator, output_type, num_inference_steps):
        from types import SimpleNamespace

        self.calls.append((image.size, prompt, output_type, num_inference_steps))
        for _ in range(num_inference_steps):
            self.transformer(torch.zeros(2, 4))  # CFG: 2 samples per forward
        return SimpleNamespace(images=torch.full((1, 3, *image.size[::-1]), 0.25))


def test_pipeline_editor_counts_its_forwards():
    from accel.search.raise_ import PipelineEditor

    pipe = FakeEditPipeline()
    editor = PipelineEditor(pipe, {"num_inference_steps": 3})
    image, nfe = editor.edit(torch.rand(3, 32, 32), "make it red", None)
    assert nfe == 6 and image.shape == (3, 32, 32) and float(image.mean()) == pytest.approx(0.25)
    assert pipe.calls == [((32, 32), "make it red", "pt", 3)]
    assert not pipe.transformer._forward_pre_hooks  # the counting hook is gone
    with pytest.raises(ValueError, match="edit pipeline"):
        PipelineEditor(object())
