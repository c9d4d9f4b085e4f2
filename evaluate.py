"""Score a trained generator against real faces, offline, without downloads.

The score is the sliced Wasserstein distance on Laplacian-pyramid patches
(facegen/metrics/swd.py; lower is better). On the course data it compares the
generator's faces with the 2,600 held-out faces that training never saw, and
prints beside it the real-vs-real floor (held-out faces against as many
training faces), the best score a generator could get at this sample size, and
the memorisation ratio (near 1: no copying; well below 1: copies).

Examples; without --weights it scores the published assets/generator.pt:

    python evaluate.py --real processed_celeba_small/
    python evaluate.py --real data.zip --weights run/generator.pt --n 1000
    python evaluate.py --real data.zip --json out.json
    python evaluate.py --real my_faces/ --split all --save-samples fake.pt
"""

import argparse
import json
import sys
import time

import torch

import dcgan
from facegen import score
from facegen.faces import (HELD_OUT_SIZE, held_out_fingerprint, load_faces,
                           metrics_cache_dir)
from facegen.fetch import prepare_data
from facegen.files import CheckpointError
from facegen.run import load_generator
from facegen.runtime import cpu_type
from facegen.settings import DEFAULT_DATA_DIR


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        '--real',
        required=True,
        help='a folder or zip of real faces (the course data, or your own)',
    )
    parser.add_argument(
        '--weights',
        default='assets/generator.pt',
        help=(
            'a generator saved by helpers.save_generator '
            '(default: assets/generator.pt)'
        ),
    )
    parser.add_argument(
        '--n',
        type=int,
        default=HELD_OUT_SIZE,
        help='faces generated and compared (default 2600, all held-out)',
    )
    parser.add_argument(
        '--split',
        choices=('held_out', 'all'),
        default='held_out',
        help=(
            "held_out: compare with the faces training never saw, with floor "
            "and memorisation (course data); all: every image of --real"
        ),
    )
    parser.add_argument(
        '--data-dir',
        default=DEFAULT_DATA_DIR,
        help='where a zip given as --real is extracted',
    )
    parser.add_argument('--json', help='also write the results to this file')
    parser.add_argument(
        '--save-samples',
        help='write the generated faces as a uint8 tensor (n, 3, H, W)',
    )
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f'--n must be at least 1; got {args.n}')
    return args


def check_held_out(info, data_dir, weights):
    """True when the generator was trained without data_dir's held-out
    faces, None when it was saved without a record of them; else warn on
    stderr that the score may flatter it, and return False. The faces named
    are still the ones compared."""
    if info['held_out'] is None:
        return None
    if info['held_out'] == held_out_fingerprint(data_dir):
        return True
    print(f'Warning: {weights} was trained with other faces held out than '
          f'the held-out faces of {data_dir}. If it trained on these faces '
          f'from another folder level (e.g. processed_celeba_small/ rather '
          f'than its subfolder celeba/, whose file names split differently), '
          f'some faces compared below are faces it trained on and the score '
          f'flatters it: give --real the folder or zip it trained on. If it '
          f'never saw these faces, --split all compares with all of them.',
          file=sys.stderr)
    return False


def main(argv=None):
    args = parse_args(argv)
    started = time.perf_counter()
    G, info = load_generator(args.weights, dcgan.Generator)
    size, z_size = info['config']['image_size'], info['config']['z_size']
    data_dir = prepare_data(args.data_dir, source=args.real)
    real = load_faces(data_dir, size, split=args.split)  # (M, 3, S, S) uint8
    if args.split == 'held_out':
        as_trained = check_held_out(info, data_dir, args.weights)
        train = load_faces(data_dir, size, split='train')
        result, fake = score.full_report(
            G,
            z_size,
            real,
            train,
            args.n,
            cache_dir=metrics_cache_dir(data_dir),
        )
    else:
        result, fake = score.score_generator(G, z_size, real, n=args.n)
        as_trained = None  # every image: no split to check
    result.update(
        weights=args.weights,
        real=args.real,
        split=args.split,
        held_out_as_trained=as_trained,
        image_size=size,
        seconds=round(time.perf_counter() - started, 1),
        cpu=cpu_type(),
    )
    print(score.describe(result, args.split.replace('_', '-')))
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
    except (OSError, ValueError, CheckpointError) as err:
        sys.exit(f'evaluate.py: {err}')
