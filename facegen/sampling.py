"""Latent vectors and the faces G makes of them.

A generated face is a point z; seeded_z names a point by a number, so the
same seed gives the same face on every machine, and latent_path walks from
one point to another along the sphere where random z lie.
"""

import torch
from torch.optim.swa_utils import update_bn

# Below this the ends are (anti)parallel: no single great circle.
_MIN_SIN = 1e-6


def _latent_vector(z, name):
    """z as a 1-D float64 CPU tensor; z may be (z_size,) or one row
    (1, z_size)."""
    if z.dim() == 2 and z.shape[0] == 1:
        z = z[0]
    if z.dim() != 1:
        raise ValueError(
            f'{name} must be one latent vector, (z_size,) or (1, z_size); got '
            f'shape {tuple(z.shape)}. Pass a single row, e.g. z[i].'
        )
    return z.detach().to('cpu', torch.float64)


def _slerp(a, b, t):
    """Points at fractions t (a column) of the way from a to b: the direction
    turns along the great circle through a and b while the length changes
    linearly."""
    length_a, length_b = a.norm(), b.norm()
    if length_a == 0 or length_b == 0:
        return (1 - t) * a + t * b
    u, v = a / length_a, b / length_b
    angle = torch.arccos(torch.dot(u, v).clamp(-1.0, 1.0))
    if torch.sin(angle) < _MIN_SIN:
        return (1 - t) * a + t * b
    direction = (
        torch.sin((1 - t) * angle) * u + torch.sin(t * angle) * v
    ) / torch.sin(angle)
    return direction * ((1 - t) * length_a + t * length_b)


def latent_path(z_start, z_end, steps):
    """(steps, z_size) float32 latent points from z_start to z_end, ends
    included, on z_start's device.

    Gaussian latent vectors of size d lie almost all near the sphere of radius
    sqrt(d), so that is where G was trained. A straight line between two of
    them cuts inside the sphere (halfway between two random z its length is
    only about 0.7 of theirs) and the middle faces come out faded. Spherical
    interpolation (slerp) keeps every point at a length between those of the
    ends. Where the ends are (anti)parallel, or one is zero, there is no single
    great circle, so the path is the straight line instead.
    """
    start, end = (
        _latent_vector(z_start, 'z_start'),
        _latent_vector(z_end, 'z_end'),
    )
    if start.shape != end.shape:
        raise ValueError(
            f'z_start and z_end must have the same size; got {start.numel()} '
            f'and {end.numel()}. Draw both with the same z_size.'
        )
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(
            f'steps must be an integer of at least 2 (the two ends); '
            f'got {steps!r}.'
        )
    t = torch.linspace(0, 1, steps, dtype=torch.float64)[:, None]  # (steps, 1)
    return _slerp(start, end, t).to(z_start.device, torch.float32)


def seeded_z(seed, z_size, device='cpu'):
    """The latent vector (1, z_size) for seed: the same seed gives the same z
    everywhere.

    It is drawn on the CPU from a torch.Generator of its own, so it does not
    depend on the device and leaves torch's global random state (and so a
    seeded run) untouched.
    """
    generator = torch.Generator(device='cpu').manual_seed(seed)
    return torch.randn(1, z_size, generator=generator).to(device)


def _model_device(model):
    """The device of model's first parameter (the CPU for a model without
    any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device('cpu')


def generate(G, z):
    """G's images for z, (N, 3, H, W) in [-1, 1] on the CPU, in eval mode
    (batch norm uses its running statistics) and without gradients; G's
    training mode is restored after."""
    was_training = G.training
    G.eval()  # batch norm uses its running statistics and does not update them
    try:
        with torch.no_grad():
            return G(z.to(_model_device(G))).cpu()
    finally:
        G.train(was_training)


def to_uint8(images, value_range=(-1, 1)):
    """Float images in value_range -> uint8 pixels in [0, 255], same shape, on
    the CPU."""
    low, high = value_range
    unit = (images.detach().float().cpu() - low) / (high - low)
    return (unit.clamp(0, 1) * 255).round().to(torch.uint8)


def sample_faces(G, z_size, n, seed=0, batch_size=500):
    """n faces from G as uint8 (n, 3, S, S), made from seeded noise so that
    the same seed gives the same faces; generated batch by batch in eval
    mode."""
    # The global random state stays as it is.
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, z_size, generator=generator)  # (n, z_size)
    return torch.cat(
        [to_uint8(generate(G, chunk)) for chunk in z.split(batch_size)]
    )


# 12,800 faces: 20 batches left the score 10% noisier.
_RECALIBRATION_BATCHES = 50
_RECALIBRATION_BATCH_SIZE = 256


def recalibrate_batch_norm(G, z_size, seed=0):
    """Re-estimate G's batch-norm statistics for the weights it has now;
    returns G.

    During training each batch-norm layer keeps a running average dominated by
    the last ten or so batches (momentum 0.1) of a network that was still
    changing, so in eval mode its faces come out a little off. This runs G in
    training mode on fresh noise and replaces those averages with exact ones
    for the final weights (torch.optim.swa_utils.update_bn, fed with z). The
    weights stay as they are; the noise comes from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    device = _model_device(G)
    batches = [  # each (256, z_size)
        torch.randn(_RECALIBRATION_BATCH_SIZE, z_size, generator=generator)
        for _ in range(_RECALIBRATION_BATCHES)
    ]
    with torch.no_grad():
        update_bn(batches, G, device)
    return G
