import pytest
import torch

from dpl.core import DplError
from dpl.core.data import augment


def batch(n=64, c=1, size=16):
    torch.manual_seed(0)
    return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8)


def test_randaugment_draws_ops_per_sample_and_keeps_shape_and_dtype():
    x = batch()
    out = augment.randaugment(x, 2, 15)
    assert out.shape == x.shape and out.dtype == torch.uint8
    changed = (out != x).flatten(1).any(1)
    assert 0.5 < changed.float().mean() < 1.0    # identity is one of the 14 ops: a few samples keep their pixels
    colour = augment.randaugment(batch(c=3), 3, 30)
    assert colour.shape == (64, 3, 16, 16)


def test_randaugment_magnitude_zero_changes_little():
    x = batch()
    strong = (augment.randaugment(x, 2, 30).float() - x.float()).abs().mean()
    weak = (augment.randaugment(x, 2, 0).float() - x.float()).abs().mean()
    assert weak < strong


def test_random_crop_shifts_each_sample_within_the_padding():
    x = torch.zeros(32, 1, 8, 8, dtype=torch.uint8)
    x[:, :, 3:5, 3:5] = 255
    out = augment.random_crop(x, 2)
    centres = [tuple((img[0] == 255).nonzero().float().mean(0).tolist()) for img in out]
    assert len(set(centres)) > 5
    assert all(abs(r - 3.5) <= 2 and abs(c - 3.5) <= 2 for r, c in centres)
    assert int((out == 255).sum()) <= int((x == 255).sum())


def test_random_hflip_flips_about_half():
    x = batch(n=400)
    out = augment.random_hflip(x)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert 120 < int(flipped.sum()) < 280


def test_to_input_normalizes():
    x = torch.full((2, 1, 4, 4), 255, dtype=torch.uint8)
    assert torch.allclose(augment.to_input(x, [0.5], [0.25]), torch.full((2, 1, 4, 4), 2.0))


@pytest.mark.parametrize("text", ["2", "a,b", "2,31", "-1,5"])
def test_randaugment_option_is_checked(text):
    with pytest.raises(DplError, match="--randaugment"):
        augment.parse_randaugment(text)
