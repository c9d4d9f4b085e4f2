"""Score a trained generator against real faces, offline, with no downloaded weights.

The score is the sliced Wasserstein distance on Laplacian-pyramid patches (metrics/swd.py;
lower is better). On the course data it compares the generator's faces with the 2,600
held-out faces that training never saw, and prints beside it the real-vs-real floor
(held-out faces against as many training faces), the best score a generator could get at
this sample size, and the memorisation ratio (near 1: no copying; well below 1: copies).

    python evaluate.py --real processed_celeba_small/     # the published assets/generator.pt
    python evaluate.py --real data.zip --weights run/generator.pt --n 1000 --json out.json
    python evaluate.py --real my_faces/ --split all --save-samples fake.pt
"""
import argparse
import json
import sys
import time

import torch

import dcgan
import helpers
import metrics

EVAL_SEED = 2600   # the noise of the scored faces: the same for every generator
FLOOR_SEED = 0     # which training faces stand in for 'real' in the floor
# Which 2,600 faces are drawn moves the score by up to about a quarter (real-vs-real: 8 to
# 14 across subsets), so each score is the mean over a few draws.
REPEATS = 3


def score_faces(fake, held_out, train=None):
    """Scores of generated uint8 faces (n, 3, S, S) against as many held-out real faces:
    {'n', 'swd'}, and 'memorisation' when the training faces are given."""
    n = min(len(fake), len(held_out))
    result = {'n': n, 'swd': metrics.calc_metric('swd', held_out[:n], fake[:n])['value']}
    if train is not None:
        result['memorisation'] = metrics.calc_metric(
            'memorisation', fake[:n], train, held_out[:n])['value']
    return result


def real_floor(held_out, train, n, repeats=REPEATS, metric='swd', cache_dir=None):
    """The score of n real training faces against n held-out ones, averaged over `repeats`
    random subsets: what a perfect generator would get at this n (the SWD grows as n
    shrinks, so compare at equal n). metric is 'swd', or 'swd_fast' for epoch_scorer.
    With a cache_dir, each subset's score is kept there and reused while the faces and the
    metric's code stay the same (helpers.metrics_cache_dir(data_dir) is the usual one)."""
    n = min(n, len(held_out), len(train))
    scores = []
    for repeat in range(repeats):
        generator = torch.Generator().manual_seed(FLOOR_SEED + repeat)
        pick = torch.randperm(len(train), generator=generator)[:n]
        record = metrics.cached_metric(metric, held_out[:n], train[pick],
                                       cache_dir=cache_dir)
        scores.append(record['value'])
    return sum(scores) / repeats


def epoch_scorer(held_out, z_size, n=helpers.HELD_OUT_SIZE):
    """A function G -> the fast SWD ('swd_fast') of n of G's faces against n held-out
    faces: one draw, a few seconds, for following progress after every epoch. Its scale
    differs from the full score's; compare it with real_floor(..., metric='swd_fast')."""
    real = held_out[:n]

    def score(G):
        fake = helpers.sample_faces(G, z_size, len(real), seed=EVAL_SEED)
        return metrics.calc_metric('swd_fast', real, fake)['value']
    return score


def score_generator(G, z_size, held_out, train=None, n=helpers.HELD_OUT_SIZE,
                    repeats=REPEATS):
    """score_faces for n faces of G, with the SWD averaged over `repeats` draws of noise
    (seeds EVAL_SEED, EVAL_SEED + 1, ...). Returns the scores and the first draw's faces."""
    n = min(n, len(held_out))
    draws = [helpers.sample_faces(G, z_size, n, seed=EVAL_SEED + repeat)
             for repeat in range(repeats)]
    scores = [score_faces(fake, held_out, train if repeat == 0 else None)
              for repeat, fake in enumerate(draws)]
    result = scores[0]
    result['swd'] = sum(score['swd'] for score in scores) / repeats
    return result, draws[0]


def full_report(G, z_size, held_out, train, n=helpers.HELD_OUT_SIZE, cache_dir=None):
    """Everything the score says about G: {'n', 'swd', 'memorisation', 'floor',
    'swd_over_floor'}, plus the generated faces (n, 3, S, S) uint8 it was computed on.
    cache_dir: where the floor is kept between runs (see real_floor)."""
    result, fake = score_generator(G, z_size, held_out, train, n)
    result['floor'] = real_floor(held_out, train, result['n'], cache_dir=cache_dir)
    result['swd_over_floor'] = result['swd'] / result['floor']
    return result, fake


def describe(result, what='held-out'):
    """The result of score_faces or full_report as a few printable lines."""
    size = f" at {result['image_size']}x{result['image_size']}" if 'image_size' in result else ''
    lines = [f"SWD {result['swd']:.2f} for {result['n']:,} generated vs {result['n']:,} "
             f"{what} real faces{size} (lower is better)."]
    if 'floor' in result:
        lines.append(f"Real-vs-real floor {result['floor']:.2f}: the score is "
                     f"{result['swd_over_floor']:.2f}x the floor.")
    if 'memorisation' in result:
        lines.append(f"Memorisation ratio {result['memorisation']:.2f} (about 1: no copying; "
                     f"well below 1: copies of training faces).")
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--real', required=True,
                        help='a folder or zip of real faces (the course data, or your own)')
    parser.add_argument('--weights', default='assets/generator.pt',
                        help='a generator saved by helpers.save_generator '
                             '(default: assets/generator.pt)')
    parser.add_argument('--n', type=int, default=helpers.HELD_OUT_SIZE,
                        help='faces generated and compared (default 2600, all held-out)')
    parser.add_argument('--split', choices=('held_out', 'all'), default='held_out',
                        help="held_out: compare with the faces training never saw, with floor "
                             "and memorisation (course data); all: every image of --real")
    parser.add_argument('--data-dir', default='processed_celeba_small/',
                        help='where a zip given as --real is extracted')
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument('--save-samples',
                        help='write the generated faces as a uint8 tensor (n, 3, H, W)')
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f'--n must be at least 1; got {args.n}')
    return args


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    G, info = helpers.load_generator(args.weights, dcgan.Generator)
    size, z_size = info['config']['image_size'], info['config']['z_size']
    data_dir = helpers.prepare_data(args.data_dir, source=args.real)
    real = helpers.load_faces(data_dir, size, split=args.split)  # (M, 3, S, S) uint8
    if args.split == 'held_out':
        train = helpers.load_faces(data_dir, size, split='train')
        result, fake = full_report(G, z_size, real, train, args.n,
                                   cache_dir=helpers.metrics_cache_dir(data_dir))
    else:
        result, fake = score_generator(G, z_size, real, n=args.n)
    result.update(weights=args.weights, real=args.real, split=args.split, image_size=size,
                  seconds=round(time.perf_counter() - started, 1), cpu=helpers.cpu_name())
    print(describe(result, args.split.replace('_', '-')))
    if args.save_samples:
        torch.save(fake, args.save_samples)
        print(f'Saved {tuple(fake.shape)} uint8 faces to {args.save_samples}')
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as out:
            json.dump(result, out, indent=1)
    return result


if __name__ == '__main__':
    try:
        main()
    except (FileNotFoundError, ValueError, helpers.CheckpointError) as err:
        sys.exit(f'evaluate.py: {err}')
