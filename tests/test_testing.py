"""accel.testing.jitter_: a seeded, in-place perturbation of every parameter."""

import torch

from accel.testing import jitter_


def test_jitter_is_seeded_and_in_place():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    before = a.weight.detach().clone()
    assert jitter_(a, seed=7) is a and jitter_(b, seed=7) is b
    assert torch.equal(a.weight, b.weight) and not torch.equal(a.weight, before)
    assert 0 < (a.weight - before).abs().max() < 0.5 and a.weight.requires_grad
    jitter_(b, seed=8)
    assert not torch.equal(a.weight, b.weight)
