"""Sliced Wasserstein distance on Laplacian-pyramid patches (Karras et al.
2018, appendix D).

Each image is split into a Laplacian pyramid from full size down to 16x16. At
every level, 7x7x3 neighbourhoods are taken at random places and flattened
into 147-d descriptors. The real and fake descriptor sets of a level are
compared by the sliced Wasserstein distance: project both on random unit
directions, sort each projection and average the absolute differences of the
sorted values. Small values mean similar local statistics at that scale.
"""

import torch
import torch.nn.functional as F

COARSEST = 16  # the pyramid stops at 16x16, as in the paper
BINOMIAL_5 = (1.0, 4.0, 6.0, 4.0, 1.0)
# Random directions are drawn DIRS_PER_BATCH at once (this fixes the random
# stream) and sorted SORT_CHUNK at a time: 32 x 2**17 values, about 50 MB a set.
DIRS_PER_BATCH = 128
SORT_CHUNK = 32
IMAGE_CHUNK = 512  # images turned into pyramids at once


def to_unit_float(images):
    """uint8 images in [0, 255] or float images in [0, 1] -> float32 in
    [0, 1], same shape."""
    if images.dtype == torch.uint8:
        return images.float() / 255
    return images.float()


def _blur(x, gain=1.0):
    """Separable 5-tap binomial blur with reflected borders; x is
    (B, C, H, W)."""
    taps = torch.tensor(BINOMIAL_5, dtype=x.dtype, device=x.device)
    taps = taps * (gain**0.5) / taps.sum()
    channels = x.shape[1]
    row = taps.view(1, 1, 1, 5).repeat(channels, 1, 1, 1)  # (C, 1, 1, 5)
    col = taps.view(1, 1, 5, 1).repeat(channels, 1, 1, 1)  # (C, 1, 5, 1)
    x = F.conv2d(F.pad(x, (2, 2, 0, 0), mode='reflect'), row, groups=channels)
    return F.conv2d(
        F.pad(x, (0, 0, 2, 2), mode='reflect'), col, groups=channels
    )


def _downsample(x):
    """Blur then keep every second pixel: (B, C, H, W) -> (B, C, H/2, W/2)."""
    return _blur(x)[:, :, ::2, ::2]


def _upsample(x):
    """Insert zeros between pixels and blur with 4x gain, so flat areas keep
    their level."""
    b, c, h, w = x.shape
    up = x.new_zeros(b, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return _blur(up, gain=4.0)


def pyramid_sizes(size):
    """Level sizes from `size` down to COARSEST, e.g. 32 -> [32, 16]."""
    if (
        size < COARSEST
        or size % COARSEST
        or (size // COARSEST) & (size // COARSEST - 1)
    ):
        raise ValueError(
            f'SWD needs square images of 16 * 2**k pixels, got {size}'
        )
    sizes = []
    while size >= COARSEST:
        sizes.append(size)
        size //= 2
    return sizes


def laplacian_pyramid(images):
    """Band-pass levels of (B, C, S, S) floats; the last, 16x16 level is the
    Gaussian level."""
    levels = []
    current = images
    while current.shape[-1] > COARSEST:
        smaller = _downsample(current)
        levels.append(current - _upsample(smaller))  # detail lost by halving
        current = smaller
    levels.append(current)
    return levels


def _draw_slots(n_images, n_patches, count, generator):
    """Which image each of `count` descriptors comes from: a random subset of
    the n_images * n_patches slots, sorted so that image chunks read
    contiguous runs."""
    slots = torch.randperm(n_images * n_patches, generator=generator)[:count]
    return torch.sort(slots // n_patches).values  # (count,)


def _patches(level, image_index, size, patch_size, generator):
    """One random patch_size^2 x C neighbourhood per entry of image_index,
    flattened.

    level: (B, C, S, S); image_index: (M,) rows of `level`. Returns
    (M, C * patch_size^2)."""
    count = image_index.numel()
    top = torch.randint(0, size - patch_size + 1, (count,), generator=generator)
    left = torch.randint(
        0, size - patch_size + 1, (count,), generator=generator
    )
    offsets = torch.arange(patch_size)
    rows = (top[:, None] + offsets)[:, :, None]  # (M, P, 1)
    cols = (left[:, None] + offsets)[:, None, :]  # (M, 1, P)
    picked = level[image_index[:, None, None], :, rows, cols]  # (M, P, P, C)
    return picked.permute(0, 3, 1, 2).reshape(count, -1)  # (M, C*P*P)


def _descriptors(images, n_patches, count, patch_size, seed):
    """`count` descriptors of every pyramid level, chunk by chunk over the
    images.

    images: (N, C, S, S). Returns {size: (count, C*P*P)}."""
    generator = torch.Generator().manual_seed(seed)
    # (count,)
    slots = _draw_slots(images.shape[0], n_patches, count, generator)
    sizes = pyramid_sizes(images.shape[-1])
    per_level = {size: [] for size in sizes}
    for start in range(0, images.shape[0], IMAGE_CHUNK):
        stop = min(start + IMAGE_CHUNK, images.shape[0])
        lo, hi = torch.searchsorted(slots, torch.tensor([start, stop])).tolist()
        if lo == hi:
            continue
        chunk = to_unit_float(images[start:stop])  # (B, C, S, S)
        for size, level in zip(sizes, laplacian_pyramid(chunk)):
            per_level[size].append(
                _patches(
                    level, slots[lo:hi] - start, size, patch_size, generator
                )
            )
    return {size: torch.cat(parts) for size, parts in per_level.items()}


def sliced_wasserstein(a, b, n_projections, generator):
    """Mean over random unit directions of the 1-D Wasserstein distance
    between the projections of a (M, D) and b (M, D); both sets must have the
    same count M."""
    dim = a.shape[1]
    total = 0.0
    for start in range(0, n_projections, DIRS_PER_BATCH):
        n_dirs = min(DIRS_PER_BATCH, n_projections - start)
        dirs = torch.randn(dim, n_dirs, generator=generator)
        dirs /= dirs.norm(dim=0, keepdim=True)  # (D, K) unit columns
        for part in dirs.split(SORT_CHUNK, dim=1):  # (D, k): bounds the memory
            # (k, M) each
            proj_a = torch.sort((a @ part).T.contiguous(), dim=1).values
            proj_b = torch.sort((b @ part).T.contiguous(), dim=1).values
            total += (proj_a - proj_b).abs().mean(dim=1).sum().item()
    return total / n_projections


def swd_levels(
    real,
    fake,
    n_patches=128,
    n_projections=512,
    patch_size=7,
    seed=0,
    max_descriptors=2**17,
):
    """SWD x 1e3 between two image sets for each pyramid level: {size: swd}.

    real, fake: (N, 3, S, S) uint8 in [0, 255] or float in [0, 1],
    S = 16 * 2**k. Each level draws n_patches patches per image, then keeps the
    same number of descriptors from both sets (the smaller set's count, at most
    max_descriptors; None keeps all). Descriptors are normalised per coordinate
    with the *real* set's mean and std, so one reference gives every generator
    the same yardstick and a shift in the fake set's colour or contrast still
    counts. Deterministic for a seed; uses its own generator, never the global
    RNG. The score grows as the sets shrink: compare scores only at equal
    sizes.
    """
    if real.shape[1:] != fake.shape[1:]:
        raise ValueError(
            f'real {tuple(real.shape)} and fake {tuple(fake.shape)} differ'
        )
    count = min(real.shape[0], fake.shape[0]) * n_patches
    if max_descriptors is not None:
        count = min(count, max_descriptors)
    # Both sets restart the same random stream: equal-sized sets are read at
    # the same slots and places, which removes sampling noise from comparisons
    # (a set against itself is 0).
    real_desc = _descriptors(real, n_patches, count, patch_size, seed)
    fake_desc = _descriptors(fake, n_patches, count, patch_size, seed)
    generator = torch.Generator().manual_seed(seed)
    levels = {}
    for size in list(real_desc):
        # (M, D) each, freed after
        a, b = real_desc.pop(size), fake_desc.pop(size)
        std, mean = torch.std_mean(a, dim=0)  # (D,) each
        std = std.clamp_min(1e-8)  # flat coordinates stay finite
        a.sub_(mean).div_(std)  # in place: no second copy
        b.sub_(mean).div_(std)
        levels[size] = 1e3 * sliced_wasserstein(a, b, n_projections, generator)
    return levels


def compute_swd(real, fake, **settings):
    """The SWD score: swd_levels averaged over the pyramid levels, one float
    (lower is better). settings are swd_levels' keyword arguments."""
    levels = swd_levels(real, fake, **settings)
    return sum(levels.values()) / len(levels)
