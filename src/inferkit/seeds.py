"""Seeds and initial noise: image ``i`` of a call with seed ``s`` uses seed ``s + i``.

Noise for each image comes from its own generator, so an image's pixels do not depend on how
many other images share its batch. By default the noise is drawn on the CPU in float32, so they
do not depend on the device or dtype either.

Example:
    >>> image_seeds(7, 3)
    (7, 8, 9)
    >>> image_seeds(2**64 - 1, 2)
    (18446744073709551615, 0)

"""

from __future__ import annotations

import secrets
from collections.abc import Sequence

import torch

__all__ = [
    "draw_seed",
    "generators",
    "image_seeds",
    "nth_seed",
    "initial_noise",
    "slerp",
    "varied_noise",
]

_SEED_SPACE = 2**64


def draw_seed() -> int:
    """Draw a fresh seed (32 bits, so it is short to type back in).

    Example:
        >>> 0 <= draw_seed() < 2**32
        True

    """
    return secrets.randbelow(2**32)


def nth_seed(seed: int, index: int) -> int:
    """Return the seed of image ``index`` of a call whose first seed is ``seed``.

    Example:
        >>> nth_seed(2**64 - 1, 1)
        0

    """
    return (seed + index) % _SEED_SPACE


def image_seeds(seed: int, count: int) -> tuple[int, ...]:
    """Return the seeds of ``count`` images starting at ``seed`` (wrapping at 2**64)."""
    return tuple(nth_seed(seed, i) for i in range(count))


def generators(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """Return one seeded generator per image."""
    return [torch.Generator(device=device).manual_seed(s) for s in seeds]


def initial_noise(
    gens: Sequence[torch.Generator],
    shape: tuple[int, ...],
    *,
    device: str | torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Draw one latent per generator (``shape`` excludes the batch) and stack them.

    Noise is drawn in float32 on each generator's device and then moved and cast, so that the
    same seed gives the same noise in every dtype.

    Example:
        >>> a = initial_noise(generators([1, 2]), (4, 8, 8), device="cpu", dtype=torch.float32)
        >>> b = initial_noise(generators([2]), (4, 8, 8), device="cpu", dtype=torch.float32)
        >>> bool(torch.equal(a[1], b[0]))
        True

    """
    parts = [
        torch.randn((1, *shape), generator=g, device=g.device, dtype=torch.float32) for g in gens
    ]
    return torch.cat(parts).to(device=device, dtype=dtype)


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Interpolate each image's noise along the great circle from ``low`` to ``high``.

    Unlike a straight blend, this keeps the noise's magnitude, so the sampler sees noise of
    the expected scale at every strength. ``strength`` 0 returns ``low`` and 1 returns
    ``high`` exactly.

    Example:
        >>> a, b = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
        >>> [round(v, 4) for v in slerp(0.5, a, b)[0].tolist()]
        [0.7071, 0.7071]

    """
    if strength <= 0:
        return low
    if strength >= 1:
        return high
    flat_low, flat_high = low.flatten(1).double(), high.flatten(1).double()
    dot = (flat_low / flat_low.norm(dim=1, keepdim=True)) * (
        flat_high / flat_high.norm(dim=1, keepdim=True)
    )
    omega = torch.acos(dot.sum(1).clamp(-1, 1)).unsqueeze(1)
    sin = torch.sin(omega)
    nearly_parallel = sin.abs() < 1e-6
    safe = torch.where(nearly_parallel, torch.ones_like(sin), sin)
    a = torch.where(nearly_parallel, 1 - strength, torch.sin((1 - strength) * omega) / safe)
    b = torch.where(
        nearly_parallel, torch.full_like(sin, strength), torch.sin(strength * omega) / safe
    )
    return (a * flat_low + b * flat_high).reshape(low.shape).to(low.dtype)


def varied_noise(
    seeds: Sequence[int],
    variation_seeds: Sequence[int],
    strength: float,
    shape: tuple[int, ...],
    *,
    noise_device: str | torch.device,
    device: str | torch.device,
    dtype: torch.dtype,
) -> torch.Tensor:
    """Draw the noise of ``seeds``, moved ``strength`` of the way to ``variation_seeds``'.

    Example:
        >>> a = varied_noise([1], [9], 0.0, (4, 8, 8), noise_device="cpu", device="cpu",
        ...                  dtype=torch.float32)
        >>> b = initial_noise(generators([1]), (4, 8, 8), device="cpu", dtype=torch.float32)
        >>> bool(torch.equal(a, b))
        True

    """
    base = initial_noise(generators(seeds, noise_device), shape, device="cpu", dtype=torch.float32)
    if strength > 0:
        other = initial_noise(
            generators(variation_seeds, noise_device), shape, device="cpu", dtype=torch.float32
        )
        base = slerp(strength, base, other)
    return base.to(device=device, dtype=dtype)
