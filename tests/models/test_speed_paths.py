"""Fast generation paths against their plain reference twins (golden weights, tiny configs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from fertk.core.errors import InvalidInputError
from fertk.models.stargan import StarGANGenerator, load_stargan_generator

ATOL = 1e-5
VARIANTS = [("stargan_small-G.ckpt", "stargan_small-io.safetensors"),
            ("stargan_small_perturbed-G.ckpt", "stargan_small_perturbed-io.safetensors")]


@pytest.mark.parametrize("weights,io", VARIANTS)
def test_shared_first_conv_reproduces_the_official_outputs(golden_dir: Path, weights: str, io: str) -> None:
    G, _ = load_stargan_generator(golden_dir / weights)
    ref = load_file(str(golden_dir / io))
    with torch.no_grad():
        y = G.forward_shared(ref["x"], ref["c"][:, None])       # one label per image
    torch.testing.assert_close(y, ref["y"], atol=ATOL, rtol=0)


@pytest.mark.parametrize("weights", [v[0] for v in VARIANTS])
@pytest.mark.parametrize("size", [16, 64, 128])
def test_shared_first_conv_equals_the_concatenated_conv(golden_dir: Path, weights: str, size: int) -> None:
    """Many graded labels per image, at several sizes: the same as repeating each image per label."""
    G, _ = load_stargan_generator(golden_dir / weights)
    gen = torch.Generator().manual_seed(size)
    x = torch.rand(2, 3, size, size, generator=gen) * 2 - 1
    alpha = torch.rand(2, 5, 1, generator=gen)
    target = torch.nn.functional.one_hot(torch.randint(0, G.c_dim, (2, 5), generator=gen), G.c_dim).float()
    neutral = G.neutral_vector(1).reshape(1, 1, -1)
    c = alpha * target + (1 - alpha) * neutral                 # [2, 5, c_dim], as the pipeline builds it
    with torch.no_grad():
        shared = G.forward_shared(x, c)
        plain = G(x.repeat_interleave(5, dim=0), c.reshape(-1, G.c_dim))
    assert shared.shape == (10, 3, size, size)
    torch.testing.assert_close(shared, plain, atol=ATOL, rtol=0)
    # The border is where the label map's response differs from the kernel sum: check it on its own.
    torch.testing.assert_close(shared[..., :3, :], plain[..., :3, :], atol=ATOL, rtol=0)
    torch.testing.assert_close(shared[..., -3:], plain[..., -3:], atol=ATOL, rtol=0)


def test_shared_first_conv_checks_shapes() -> None:
    G = StarGANGenerator(conv_dim=4, c_dim=3, repeat_num=0, image_size=8).eval()
    with pytest.raises(InvalidInputError, match="B, E, 3"):
        G.forward_shared(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3))
    with pytest.raises(InvalidInputError, match="B, 3, H, W"):
        G.forward_shared(torch.zeros(1, 4, 8, 8), torch.zeros(1, 2, 3))


@pytest.mark.parametrize("box", [(4, 3, 10, 10), (0, 0, 16, 16), (0, 5, 7, 11), (9, 0, 7, 16), (2, 2, 1, 1)])
def test_box_output_equals_the_cropped_full_output(golden_dir: Path, box: tuple[int, int, int, int]) -> None:
    """Only the last conv runs on the box + halo: inside, at image edges and for a 1-px box alike."""
    G, _ = load_stargan_generator(golden_dir / "stargan_small_perturbed-G.ckpt")
    gen = torch.Generator().manual_seed(sum(box))
    x = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1
    c = torch.rand(2, 3, G.c_dim, generator=gen)
    t, lft, h, w = box
    with torch.no_grad():
        full = G.forward_shared(x, c)
        part = G.forward_shared(x, c, box=box)
    assert part.shape == (6, 3, h, w)
    torch.testing.assert_close(part, full[:, :, t:t + h, lft:lft + w], atol=ATOL, rtol=0)


def test_box_outside_the_image_is_refused(golden_dir: Path) -> None:
    G, _ = load_stargan_generator(golden_dir / "stargan_small-G.ckpt")
    with pytest.raises(InvalidInputError, match="not inside"):
        G.forward_shared(torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, G.c_dim), box=(8, 8, 9, 4))
