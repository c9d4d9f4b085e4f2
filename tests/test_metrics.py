"""metrics: SWD ranks image sets sensibly and the memorisation check spots
copies.

Synthetic faces stand-ins: smooth random images (4x4 noise upsampled to
32x32), uint8."""

import pytest
import torch
import torch.nn.functional as F

from facegen.metrics import (
    METRICS,
    compute_memorisation,
    compute_swd,
    memorisation_distances,
    nearest_pairs,
    swd_levels,
)

FAST = dict(n_patches=32, n_projections=128)


def smooth_images(n, seed, size=32):
    """(n, 3, size, size) uint8 images made of low-frequency noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    x = F.interpolate(
        coarse, size=size, mode='bicubic', align_corners=False
    ).clamp(0, 1)
    return (x * 255).round().to(torch.uint8)


def blurred(images):
    """A 5x5 box blur of uint8 images, same shape and dtype."""
    x = F.avg_pool2d(
        images.float(), 5, stride=1, padding=2, count_include_pad=False
    )
    return x.round().to(torch.uint8)


@pytest.fixture(scope='module')
def sets():
    real = smooth_images(300, seed=1)
    noise = torch.randint(
        0,
        256,
        real.shape,
        generator=torch.Generator().manual_seed(3),
        dtype=torch.uint8,
    )
    return {
        'real': real,
        'same': smooth_images(300, seed=2),
        'blur': blurred(real),
        'noise': noise,
    }


@pytest.fixture(scope='module')
def scores(sets):
    return {
        name: compute_swd(sets['real'], images, **FAST)
        for name, images in sets.items()
    }


def test_swd_orders_sets(scores):
    assert scores['real'] < 0.5 * scores['same'] or scores['real'] < 1e-6, (
        scores
    )
    assert scores['same'] * 3 < scores['blur'], scores
    assert scores['blur'] * 3 < scores['noise'], scores


def test_swd_of_a_set_with_itself_is_zero(sets):
    result = compute_swd(
        sets['real'],
        sets['real'],
        n_patches=32,
        n_projections=128,
        max_descriptors=None,
    )
    assert result == pytest.approx(0.0, abs=1e-6), result


def test_swd_levels_and_mean(sets):
    levels = swd_levels(sets['real'], sets['blur'], **FAST)
    assert sorted(levels) == [16, 32], levels
    assert compute_swd(sets['real'], sets['blur'], **FAST) == pytest.approx(
        sum(levels.values()) / 2
    )
    assert all(value > 0 for value in levels.values()), levels


def test_swd_is_deterministic_and_leaves_global_rng(sets):
    state = torch.get_rng_state()
    first = compute_swd(sets['real'], sets['same'], seed=7, **FAST)
    second = compute_swd(sets['real'], sets['same'], seed=7, **FAST)
    other = compute_swd(sets['real'], sets['same'], seed=8, **FAST)
    assert torch.equal(torch.get_rng_state(), state), (
        'compute_swd moved the global RNG'
    )
    assert first == second
    assert first != other, 'the seed should change the patches and directions'


def test_swd_float_input_matches_uint8(sets):
    as_uint8 = compute_swd(sets['real'], sets['blur'], **FAST)
    as_float = compute_swd(
        sets['real'].float() / 255, sets['blur'].float() / 255, **FAST
    )
    assert as_float == pytest.approx(as_uint8, rel=1e-4)


def test_swd_rejects_sizes_without_a_16_pixel_level():
    with pytest.raises(ValueError, match='16'):
        compute_swd(
            smooth_images(4, 0, size=24), smooth_images(4, 1, size=24), **FAST
        )


@pytest.fixture(scope='module')
def faces():
    return {
        'train': smooth_images(600, seed=10),
        'held_out': smooth_images(200, seed=11),
        'fresh': smooth_images(200, seed=12),
    }


def test_memorisation_flags_copies(faces):
    copies = faces['train'][:200]
    result = memorisation_distances(copies, faces['train'], faces['held_out'])
    assert result['gen_to_train'] < 1e-2, result
    assert result['ratio'] < 0.01, result
    assert (
        compute_memorisation(copies, faces['train'], faces['held_out'])
        == result['ratio']
    )


def test_memorisation_of_fresh_samples_is_near_one(faces):
    result = memorisation_distances(
        faces['fresh'], faces['train'], faces['held_out']
    )
    assert 0.8 < result['ratio'] < 1.25, result
    assert result['ratio'] == pytest.approx(
        result['gen_to_train'] / result['held_out_to_train']
    )


def test_memorisation_subsamples_to_n(faces):
    copies = torch.cat([faces['train'][:100], faces['fresh'][:100]])
    full = compute_memorisation(
        copies, faces['train'], faces['held_out'], n=None
    )
    few = compute_memorisation(
        copies, faces['train'], faces['held_out'], n=50, seed=1
    )
    assert full != few


def test_nearest_pairs_finds_planted_copies(faces):
    generated = faces['fresh'].clone()
    planted = {5: 17, 40: 300, 123: 599}  # generated index -> training index
    for gen_index, train_index in planted.items():
        generated[gen_index] = faces['train'][train_index]
    pairs = nearest_pairs(generated, faces['train'], k=8)
    found = dict(
        zip(pairs['generated'][:3].tolist(), pairs['train'][:3].tolist())
    )
    assert found == planted, pairs
    assert pairs['distance'].shape == (8,)
    assert torch.all(pairs['distance'][:-1] <= pairs['distance'][1:])
    assert pairs['distance'][3] > 1.0, (
        'only the planted pairs should be near zero'
    )


def test_registry_names():
    assert set(METRICS) == {'swd', 'swd_fast', 'memorisation'}
    assert (
        METRICS['swd'] is compute_swd
        and METRICS['memorisation'] is compute_memorisation
    )
