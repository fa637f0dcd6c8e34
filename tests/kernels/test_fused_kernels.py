"""apply_fused_kernels on the built-in DiT and tiny diffusers Flux / Wan / SD3 transformers.

Three runs each: baseline, fused, removed. On the reference path (CPU tensors, or ACCEL_DISABLE_KERNELS=1) the
fused model runs the kernels' references, which repeat the unfused arithmetic, so it equals the baseline bit for
bit; on the Triton path (CUDA, or the interpreter on CPU) it equals it within MODEL_TOL. After remove() the model
is the baseline again, bit for bit, with no instance state left.
"""

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel, WanTransformer3DModel

from accel.kernels import FusedKernelsConfig, apply_fused_kernels, supports_fused_kernels
from accel.kernels._triton import count_launches
from accel.pipelines.shapes import ShapesTransformer2DModel, build_shapes_pipeline

# Whole tiny model, fused (float32 inside the kernels, one rounding) vs unfused (rounding after each op): max
# |difference| relative to the output's max |value|. Measured on these cases: float32 <= 5e-7, bfloat16 <= 7.2e-3
# (SD3), float16 <= 9e-4 (SD3); the table allows 2-4x that.
MODEL_TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _perturbed(model):
    # adaLN-Zero and zero-initialised output layers would make a fresh model's blocks the identity.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return model.eval()


def shapes_case():
    pipe = build_shapes_pipeline(width=32, num_layers=2, stem_channels=(8, 16), text_hidden=32, text_layers=1, seed=0)
    g = torch.Generator().manual_seed(2)
    inputs = dict(hidden_states=torch.randn(2, 3, 16, 16, generator=g), timestep=torch.tensor([0.3, 0.8]),
                  encoder_hidden_states=torch.randn(2, 6, 32, generator=g),
                  encoder_attention_mask=torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]]))
    return _perturbed(pipe.transformer), inputs


def shapes_per_token_case():
    model, inputs = shapes_case()
    inputs["timestep"] = torch.rand(2, 16, generator=torch.Generator().manual_seed(3))  # per-token sigma
    return model, inputs


def flux_case():
    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=4, num_layers=1, num_single_layers=1,
                                   attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                                   pooled_projection_dim=32, axes_dims_rope=[4, 4, 8])
    g = torch.Generator().manual_seed(2)
    img_ids = torch.stack(torch.meshgrid(torch.zeros(1), torch.arange(4.0), torch.arange(4.0), indexing="ij"), -1)
    inputs = dict(hidden_states=torch.randn(2, 16, 4, generator=g),
                  encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
                  pooled_projections=torch.randn(2, 32, generator=g), timestep=torch.tensor([0.3, 0.9]),
                  img_ids=img_ids.reshape(-1, 3), txt_ids=torch.zeros(5, 3))
    return _perturbed(model), inputs


def wan_case(per_token: bool = False):
    torch.manual_seed(0)
    model = WanTransformer3DModel(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12, in_channels=4,
                                  out_channels=4, text_dim=16, freq_dim=32, ffn_dim=32, num_layers=2,
                                  cross_attn_norm=True, rope_max_seq_len=32)
    g = torch.Generator().manual_seed(2)
    # Per-token timesteps (B, L) give the (B, L, 6, D) modulation of Wan 2.2 TI2V.
    timestep = torch.randint(0, 1000, (2, 32), generator=g) if per_token else torch.tensor([300, 900])
    inputs = dict(hidden_states=torch.randn(2, 4, 2, 8, 8, generator=g), timestep=timestep,
                  encoder_hidden_states=torch.randn(2, 7, 16, generator=g))
    return _perturbed(model), inputs


def sd3_case():
    torch.manual_seed(0)
    model = SD3Transformer2DModel(sample_size=8, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                                  num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32,
                                  pooled_projection_dim=64, out_channels=4)
    g = torch.Generator().manual_seed(2)
    inputs = dict(hidden_states=torch.randn(2, 4, 8, 8, generator=g), timestep=torch.tensor([300, 900]),
                  encoder_hidden_states=torch.randn(2, 5, 32, generator=g),
                  pooled_projections=torch.randn(2, 64, generator=g))
    return _perturbed(model), inputs


CASES = {
    "shapes": (shapes_case, {"modulated_norm": 4, "gated_residual": 4, "qk_norm_rope": 2}),
    "shapes_per_token": (shapes_per_token_case, {"modulated_norm": 4, "gated_residual": 4, "qk_norm_rope": 2}),
    "flux": (flux_case, {"modulated_norm": 3, "qk_norm_rope": 2}),
    "wan": (wan_case, {"modulated_norm": 4, "gated_residual": 4, "qk_norm_rope": 4}),
    "wan_per_token": (lambda: wan_case(per_token=True), {"modulated_norm": 4, "gated_residual": 4, "qk_norm_rope": 4}),
    "sd3": (sd3_case, {"modulated_norm": 3}),
}


# The Triton kernel behind each fused path (the keys of handle.counts), as named by count_launches.
KERNEL = {"modulated_norm": "modulated_layer_norm", "gated_residual": "gated_residual", "qk_norm_rope": "rms_norm_rope"}


def _assert_launched(launches, counts):
    """Each hooked op's kernel ran at least once per hook, and no other kernel ran (a silent fallback to the
    reference would leave its count at 0, and the model's error at 0 too)."""
    assert set(launches) == {KERNEL[op] for op in counts}, (launches, counts)
    for op, hooks in counts.items():
        assert launches[KERNEL[op]] >= hooks, (op, launches)


def _cast(model, inputs, dtype, device):
    # The built-in model's own text pooling is float32 (pipelines/shapes.py), so it only runs in float32.
    if isinstance(model, ShapesTransformer2DModel) and dtype != torch.float32:
        pytest.skip("ShapesTransformer2DModel runs in float32 only")
    keep = ("timestep", "img_ids", "txt_ids")
    cast = {k: v.to(device, dtype) if v.is_floating_point() and k not in keep else v.to(device)
            for k, v in inputs.items()}
    return model.to(device, dtype), cast


def _run(model, inputs):
    with torch.no_grad():
        return model(**inputs, return_dict=False)[0]


def _state(model):
    """Every instance attribute that hooks could touch: instance forwards and attention processors."""
    return [(name, m.__dict__.get("forward"), getattr(m, "processor", None)) for name, m in model.named_modules()]


@pytest.mark.parametrize("case", list(CASES))
def test_three_runs_on_the_reference_path(case, dtype, device, monkeypatch):
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")  # what CPU tensors get anyway
    build, counts = CASES[case]
    model, inputs = _cast(*build(), dtype, device)
    before = _state(model)
    baseline = _run(model, inputs)
    handle = apply_fused_kernels(model)
    assert handle.counts == counts
    fused = _run(model, inputs)
    handle.remove()
    removed = _run(model, inputs)
    assert baseline.abs().max() > 0
    assert torch.equal(fused, baseline)  # the references repeat the unfused arithmetic exactly
    assert torch.equal(removed, baseline)
    assert _state(model) == before
    handle.remove()  # idempotent


@pytest.mark.parametrize("case", list(CASES))
def test_triton_path_within_tolerance(case, dtype, device, force_triton):
    build, counts = CASES[case]
    model, inputs = _cast(*build(), dtype, device)
    with count_launches() as unfused_launches:
        baseline = _run(model, inputs)
    handle = apply_fused_kernels(model)
    with count_launches() as launches:
        fused = _run(model, inputs)
    handle.remove()
    _assert_launched(launches, counts)
    err = (fused.float() - baseline.float()).abs().max() / baseline.float().abs().max()
    assert err <= MODEL_TOL[dtype], f"relative max error {err:.2e}"
    with count_launches() as removed_launches:
        assert torch.equal(_run(model, inputs), baseline)
    assert not unfused_launches and not removed_launches


def test_each_fused_path_can_be_turned_off():
    model, _ = wan_case()
    processors = [m.processor for m in model.modules() if hasattr(m, "processor")]
    handle = apply_fused_kernels(model, FusedKernelsConfig(modulated_norm=False, gated_residual=True,
                                                           qk_norm_rope=False))
    assert handle.counts == {"gated_residual": 4}
    assert [m.processor for m in model.modules() if hasattr(m, "processor")] == processors
    handle.remove()
    handle = apply_fused_kernels(model, FusedKernelsConfig(False, False, False))
    assert handle.counts == {} and all("forward" not in m.__dict__ for m in model.modules())
    handle.remove()


def test_fused_sampling_equals_unfused_on_the_reference_path(device, monkeypatch):
    monkeypatch.setenv("ACCEL_DISABLE_KERNELS", "1")
    pipe = build_shapes_pipeline(width=32, num_layers=2, stem_channels=(8, 16), text_hidden=32, text_layers=1, seed=0)
    _perturbed(pipe.transformer)
    pipe.to(device)
    kw = dict(prompt=["a photo of two squares", "a photo of a red circle"], num_inference_steps=3, output_type="pt",
              height=16, width=16)
    baseline = pipe(**kw, generator=torch.Generator().manual_seed(4)).images
    handle = apply_fused_kernels(pipe.transformer)
    fused = pipe(**kw, generator=torch.Generator().manual_seed(4)).images
    handle.remove()
    assert torch.equal(fused, baseline)


def test_unsupported_models_and_double_apply_raise():
    assert not supports_fused_kernels(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="apply_fused_kernels supports ShapesTransformer2DModel, "
                                         "FluxTransformer2DModel, WanTransformer3DModel, SD3Transformer2DModel"):
        apply_fused_kernels(torch.nn.Linear(2, 2))
    pipe = build_shapes_pipeline(width=32, num_layers=1, stem_channels=(8, 16), text_hidden=32, text_layers=1)
    with pytest.raises(ValueError, match="pass pipe.transformer"):
        apply_fused_kernels(pipe)
    with pytest.raises(ValueError, match="config must be a FusedKernelsConfig"):
        apply_fused_kernels(pipe.transformer, config={"qk_norm_rope": False})
    assert supports_fused_kernels(pipe.transformer)
    handle = apply_fused_kernels(pipe.transformer)
    with pytest.raises(ValueError, match="already applied"):
        apply_fused_kernels(pipe.transformer)
    handle.remove()
    apply_fused_kernels(pipe.transformer).remove()  # fine again once removed


def test_builtin_block_in_every_dtype(dtype, device, force_triton):
    # The built-in model runs in float32 only, so its block mirror is checked in every dtype on its own.
    from accel.pipelines.shapes import DiTBlock

    block = _perturbed(DiTBlock(64, heads=2, mlp_ratio=2.0)).to(device, dtype)
    g = torch.Generator().manual_seed(5)
    x, c = (torch.randn(shape, generator=g).to(device, dtype) for shape in ((2, 11, 64), (2, 1, 64)))
    with torch.no_grad():
        baseline = block(x, c, None)
        handle = apply_fused_kernels_to_block(block)
        with count_launches() as launches:
            fused = block(x, c, None)
        handle.remove()
        _assert_launched(launches, handle.counts)
        assert torch.equal(block(x, c, None), baseline)
    err = (fused.float() - baseline.float()).abs().max() / baseline.float().abs().max()
    assert err <= MODEL_TOL[dtype], f"relative max error {err:.2e}"


def apply_fused_kernels_to_block(block):
    """apply_fused_kernels takes whole models; wrap one block in a model-shaped shell for the test."""
    from accel.kernels.fused import FusedKernelsConfig as Config
    from accel.kernels.fused import FusedKernelsHandle
    from accel.pipelines.shapes_kernels import install_fused_kernels

    handle = FusedKernelsHandle()
    install_fused_kernels(block, Config(), handle)
    assert handle.counts == {"modulated_norm": 2, "gated_residual": 2, "qk_norm_rope": 1}
    return handle
