"""How close a generator's faces come to real ones, with no downloads.

The score is the sliced Wasserstein distance on Laplacian-pyramid patches
(metrics/swd.py; lower is better) of generated faces against held-out
faces training never saw. Beside it stand the real-vs-real floor (held-out
faces against as many training faces: the best a generator could get at
this sample size) and the memorisation ratio (near 1: no copying).
"""
import torch

from . import metrics
from .faces import HELD_OUT_SIZE
from .sampling import sample_faces

EVAL_SEED = 2600   # the noise of the scored faces: the same for every G
FLOOR_SEED = 0     # which training faces stand in for 'real' in the floor
# Which 2,600 faces are drawn moves the score by up to about a quarter
# (real-vs-real: 8 to 14 across subsets): each score is a mean of draws.
REPEATS = 3


def score_faces(fake, held_out, train=None):
    """Scores of generated uint8 faces (n, 3, S, S) against as many
    held-out real faces: {'n', 'swd'}, and 'memorisation' when the training
    faces are given."""
    n = min(len(fake), len(held_out))
    result = {'n': n, 'swd': metrics.calc_metric(
        'swd', held_out[:n], fake[:n])['value']}
    if train is not None:
        result['memorisation'] = metrics.calc_metric(
            'memorisation', fake[:n], train, held_out[:n])['value']
    return result


def real_floor(held_out, train, n, repeats=REPEATS, metric='swd',
               cache_dir=None):
    """The score of n real training faces against n held-out ones, averaged
    over `repeats` random subsets: what a perfect generator would get at
    this n (the SWD grows as n shrinks, so compare at equal n). metric is
    'swd', or 'swd_fast' for epoch_scorer. With a cache_dir, each subset's
    score is kept there and reused while the faces and the metric's code
    stay the same (faces.metrics_cache_dir(data_dir) is the usual one)."""
    n = min(n, len(held_out), len(train))
    scores = []
    for repeat in range(repeats):
        generator = torch.Generator().manual_seed(FLOOR_SEED + repeat)
        pick = torch.randperm(len(train), generator=generator)[:n]
        record = metrics.cached_metric(metric, held_out[:n], train[pick],
                                       cache_dir=cache_dir)
        scores.append(record['value'])
    return sum(scores) / repeats


def epoch_scorer(held_out, z_size, n=HELD_OUT_SIZE):
    """A function G -> the fast SWD ('swd_fast') of n of G's faces against
    n held-out faces: one draw, a few seconds, for following progress after
    every epoch. Its scale differs from the full score's; compare it with
    real_floor(..., metric='swd_fast')."""
    real = held_out[:n]

    def score(G):
        fake = sample_faces(G, z_size, len(real), seed=EVAL_SEED)
        return metrics.calc_metric('swd_fast', real, fake)['value']
    return score


def score_generator(G, z_size, held_out, train=None, n=HELD_OUT_SIZE,
                    repeats=REPEATS):
    """score_faces for n faces of G, with the SWD averaged over `repeats`
    draws of noise (seeds EVAL_SEED, EVAL_SEED + 1, ...). Returns the
    scores and the first draw's faces."""
    n = min(n, len(held_out))
    draws = [sample_faces(G, z_size, n, seed=EVAL_SEED + repeat)
             for repeat in range(repeats)]
    scores = [score_faces(fake, held_out, train if repeat == 0 else None)
              for repeat, fake in enumerate(draws)]
    result = scores[0]
    result['swd'] = sum(score['swd'] for score in scores) / repeats
    return result, draws[0]


def full_report(G, z_size, held_out, train, n=HELD_OUT_SIZE, cache_dir=None):
    """Everything the score says about G: {'n', 'swd', 'memorisation',
    'floor', 'swd_over_floor'}, plus the generated faces (n, 3, S, S) uint8
    it was computed on. cache_dir: where the floor is kept between runs."""
    result, fake = score_generator(G, z_size, held_out, train, n)
    result['floor'] = real_floor(held_out, train, result['n'],
                                 cache_dir=cache_dir)
    result['swd_over_floor'] = result['swd'] / result['floor']
    return result, fake


def describe(result, what='held-out'):
    """The result of score_faces or full_report as a few printable lines."""
    size = (f" at {result['image_size']}x{result['image_size']}"
            if 'image_size' in result else '')
    lines = [f"SWD {result['swd']:.2f} for {result['n']:,} generated vs "
             f"{result['n']:,} {what} real faces{size} (lower is better)."]
    if 'floor' in result:
        lines.append(f"Real-vs-real floor {result['floor']:.2f}: the score "
                     f"is {result['swd_over_floor']:.2f}x the floor.")
    if 'memorisation' in result:
        lines.append(f"Memorisation ratio {result['memorisation']:.2f} "
                     f"(about 1: no copying; well below 1: copies of "
                     f"training faces).")
    return '\n'.join(lines)
