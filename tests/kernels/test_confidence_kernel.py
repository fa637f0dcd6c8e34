"""confidence_argmax: online softmax max-probability and argmax, Triton vs the reference."""

import pytest
import torch

from accel.kernels.confidence import confidence_argmax, confidence_argmax_fwd, confidence_argmax_reference


@pytest.mark.parametrize("shape", [(5, 123, 123), (1, 3, 70001), (2, 1, 126464)])
def test_matches_reference(shape, dtype, device, rng):
    logits = (4 * torch.randn(shape, generator=rng)).to(device, dtype)
    conf, index = confidence_argmax_fwd(logits, temperature=0.8)
    ref_conf, ref_index = confidence_argmax_reference(logits, temperature=0.8)
    assert conf.shape == index.shape == shape[:-1] and conf.dtype == torch.float32 and index.dtype == torch.int64
    assert torch.equal(index, ref_index)
    # Both sum V float32 terms, in different orders: they differ by ~sqrt(V) * 2^-24 relative (2e-5 at V = 126K).
    torch.testing.assert_close(conf, ref_conf, atol=1e-6, rtol=1e-4)


def test_ties_pick_the_first_index_across_tiles(device):
    logits = torch.zeros(3, 70000, device=device)
    logits[0, [5, 69000]] = 3.0        # tie across two vocabulary tiles
    logits[1, [66000, 69999]] = 3.0    # tie inside one tile
    logits[2] = 1.0                    # all equal: index 0, conf 1 / V
    conf, index = confidence_argmax_fwd(logits)
    assert index.tolist() == [5, 66000, 0] == logits.argmax(-1).tolist()
    torch.testing.assert_close(conf[2].cpu(), torch.tensor(1 / 70000))


def test_extreme_logits_do_not_overflow(device):
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e30, -1e30, -1e30 + 1e24]], device=device)
    conf, index = confidence_argmax_fwd(logits)
    assert index.tolist() == [0, 2] and conf[0] == 1.0 and torch.isfinite(conf).all()


def test_strided_rows(device, rng):
    logits = torch.randn(300, 4, generator=rng).to(device).t()  # (4, 300) with strides (1, 4)
    conf, index = confidence_argmax_fwd(logits)
    ref_conf, ref_index = confidence_argmax_reference(logits)
    assert torch.equal(index, ref_index)
    torch.testing.assert_close(conf, ref_conf)


def test_bad_inputs_raise(device):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        confidence_argmax(torch.zeros(2, 5, device=device), temperature=0.0)
    with pytest.raises(ValueError, match=r"logits must be \(..., V\)"):
        confidence_argmax(torch.zeros(2, 0, device=device))


def test_rows_whose_first_tile_is_all_minus_inf(device, rng):
    # Callers that filter logits first (top-k, a restricted vocabulary) give rows whose first vocabulary tile is all
    # -inf: the online softmax must not compute exp(-inf - -inf) there. Two full tiles of the launcher's mode.
    from accel.kernels import confidence
    from accel.kernels._triton import interpreting

    tile = confidence.INTERPRETER_TILE if interpreting() else confidence.GPU_TILE
    v = 2 * tile
    logits = torch.full((4, v), -float("inf"))
    logits[0, tile:] = torch.randn(tile, generator=rng)                      # finite only in the second tile
    logits[1, v - 1] = 5.0                                                   # only the very last entry is finite
    top = torch.randperm(tile, generator=rng)[:50] + tile                    # top-k: 50 survivors, second tile
    logits[2, top] = 3 * torch.randn(50, generator=rng)
    # row 3 stays all -inf: NaN conf, as documented
    conf, index = confidence_argmax_fwd(logits.to(device), temperature=0.7)
    ref_conf, ref_index = confidence_argmax_reference(logits, temperature=0.7)
    assert torch.isfinite(conf[:3]).all() and torch.isnan(conf[3])
    assert conf[1] == 1.0 and index[1] == v - 1
    assert torch.equal(index[:3].cpu(), ref_index[:3])
    torch.testing.assert_close(conf.cpu(), ref_conf, atol=1e-6, rtol=1e-5, equal_nan=True)
