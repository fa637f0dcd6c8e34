"""accel bench steps: every method family runs, rows carry what the issue asks for, measures are right."""

import pytest
import torch

from accel.evals.steps import bench_steps, curve_name, parse_method, psnr, split_methods, ssim
from accel.pipelines.shapes import build_shapes_pipeline
from accel.testing import jitter_


@pytest.fixture(scope="module")
def pipe():
    p = build_shapes_pipeline(width=32, num_layers=2, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    jitter_(p.transformer, seed=0)
    return p


def test_psnr_ssim():
    g = torch.Generator().manual_seed(0)
    a = torch.rand(2, 24, 24, 3, generator=g)
    assert torch.allclose(ssim(a, a), torch.ones(2)) and (psnr(a, a) >= 99).all()
    noisy = (a + 0.2 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert (ssim(a, noisy) < 0.9).all() and (psnr(a, noisy) < 20).all()
    assert (ssim(a, (a + 0.01).clamp(0, 1)) > ssim(a, noisy)).all()


def test_every_method_family(pipe):
    methods = ["uniform:steps=6", "uniform:steps=3", "hsa:runtime=0.5", "hsa-exact:runtime=0.5", "fbc:threshold=5",
               "taylorseer:interval=2", "magcache:threshold=5"]
    rows = bench_steps(pipe, prompts=2, seed=1, steps=6, methods=methods, batch_size=2, repeats=2)
    assert [r["method"] for r in rows] == ["full"] + methods and {r["repeats"] for r in rows} == {2}
    for r in rows:
        assert {"method", "model", "runtime", "accuracy", "psnr", "ssim"} <= r.keys() and r["runtime"] > 0
    by = {r["method"]: r for r in rows}
    assert by["full"]["psnr"] >= 99 and by["uniform:steps=6"]["psnr"] >= 99  # same seeds, same images
    assert by["uniform:steps=3"]["psnr"] < 99 and by["hsa:runtime=0.5"]["token_fraction"] <= 0.5
    assert by["hsa-exact:runtime=0.5"]["psnr"] != by["hsa:runtime=0.5"]["psnr"]  # the cache is an approximation
    for name in ("fbc:threshold=5", "taylorseer:interval=2", "magcache:threshold=5"):  # the caches skip work
        assert by[name]["psnr"] < 99 and 0 < by[name]["ssim"] <= 1
    assert not pipe.transformer.is_cache_enabled  # every cache hook removed


def test_parse_method_errors():
    assert split_methods("uniform:steps=12, hsa:runtime=0.5,decay=0,grid_steps=all,fbc:threshold=0.1") == [
        "uniform:steps=12", "hsa:runtime=0.5,decay=0,grid_steps=all", "fbc:threshold=0.1"]
    assert parse_method("hsa:runtime=0.25") == ("hsa", {"runtime": 0.25})
    assert parse_method("uniform:steps=12") == ("uniform", {"steps": 12})
    assert parse_method("hsa:runtime=0.25,decay=0,grid_steps=all,score=displacement") == (
        "hsa", {"runtime": 0.25, "decay": 0, "grid_steps": None, "score": "displacement"})
    for bad, message in [("teacache:x=1", "unknown method"), ("hsa:steps=3", "takes runtime"),
                         ("fbc:threshold=1,decay=2", "takes threshold"), ("hsa:runtime=0.5,decay=-1", "decay must"),
                         ("hsa:decay=2", "needs runtime"),
                         ("fbc:threshold=high", "must be a number"), ("uniform", "needs steps")]:
        with pytest.raises(ValueError, match=message):
            parse_method(bad)


def test_dbcache_rows_when_cache_dit_is_installed(pipe):
    """cache-dit's DBCache (an optional benchmark dependency, in the dev extra) skips blocks at a high threshold,
    is exact at threshold 0, and leaves the model as it was."""
    pytest.importorskip("cache_dit")
    blocks = [b.forward for b in pipe.transformer.blocks]
    rows = bench_steps(pipe, prompts=2, seed=1, steps=8, methods=["dbcache:threshold=0", "dbcache:threshold=5"],
                       batch_size=1)
    by = {r["method"]: r for r in rows}
    assert by["dbcache:threshold=0"]["psnr"] >= 99  # nothing below a zero threshold: the full-step images
    assert by["dbcache:threshold=5"]["psnr"] < 99 and 0 < by["dbcache:threshold=5"]["ssim"] <= 1
    assert [b.forward for b in pipe.transformer.blocks] == blocks
    model = pipe.transformer
    assert "_is_cached" not in vars(model) and model.forward == type(model).forward.__get__(model)  # disabled
    # every generation starts from a fresh cache context: the same seeded call gives the same images after reset()
    from accel.evals.steps import _CacheDiT

    def generate():
        return pipe("a red circle", num_inference_steps=8, output_type="pt",
                    generator=torch.Generator().manual_seed(0)).images

    cache = _CacheDiT(model, {"threshold": 5}, 8)
    try:
        first = generate()
        cache.reset()
        assert torch.equal(generate(), first)
    finally:
        cache.remove()


def test_plot_curves_keep_variants_apart():
    """The Pareto plot draws one curve per variant: a family's rows with the same options but their budget knob."""
    assert curve_name("hsa:runtime=0.5") == curve_name("hsa:runtime=0.25") == "hsa"
    assert curve_name("hsa:runtime=0.5,kv=stale") == "hsa kv=stale"
    assert curve_name("hsa:runtime=0.25,grid_steps=all") == "hsa grid_steps=all"
    assert curve_name("taylorseer:interval=3") == "taylorseer"
