"""How soon each recipe draws good faces: the score against training time.

Two recipes, each trained epoch by epoch for a few seeds, scored after every
epoch with the fast SWD of 2,600 generated faces against the 2,600 held-out
faces (facegen.score.epoch_scorer; lower is better; scoring is not counted
as training time):

* course: the course project's recipe (facegen.settings.COURSE) as its
  student copies ran it: torchvision ImageFolder decoding and resizing every
  JPEG in every epoch (num_workers 0), fp32, constant learning rates, for
  20 epochs. It trains on the training split only, so that the held-out
  faces stay unseen, and in the notebook's memory layout (channels_last),
  which makes it a little faster than the student copies were: the
  speed-ups below are, if anything, understated.
* default: the notebook's parameters cell (train.NOTEBOOK): faces decoded
  once (dcgan.get_dataloader), the precision choose_precision picks,
  learning rates falling from its lr (twice the course's) to 0 over its
  epochs, and the average of G's weights as the generator kept and scored
  (facegen.run.kept_generator). The course's G is scored as its student
  copies left it, batch-norm statistics and all.

Both go through the notebook's own epoch (dcgan.train_epoch) and are seeded
where the notebook seeds, so the default's run for the notebook's seed is
the notebook's run, epoch for epoch, on the same CPU type and number
format (a test compares it with the committed assets/run.json). For each seed
the script finds the course's best score and when it got there, and when
the default first scores as well: the ratio of the two times is how many
times sooner the default draws faces as good.

Run from the project root (see experiments/README.md):

    python -m experiments.time_to_quality      # 2 seeds; about an hour
    python -m experiments.time_to_quality --json assets/time_to_quality.json
    python -m experiments.time_to_quality --quick  # does it run (CI)
"""
import argparse
import json
import platform
import time
from pathlib import Path

import matplotlib
import torch

import dcgan
import train
from experiments.benchmark import course_loader
from facegen.faces import (HELD_OUT_SIZE, is_training_file, load_faces,
                           metrics_cache_dir)
from facegen.fetch import prepare_data
from facegen.metrics import append_jsonl
from facegen.run import (after_every_step, kept_generator, linear_decay,
                         weight_average)
from facegen.runtime import (choose_device, choose_precision, cpu_type,
                             keep_freed_memory, precision_label,
                             seed_everything)
from facegen.score import epoch_scorer, real_floor
from facegen.settings import COURSE, DEFAULT_DATA_DIR

COURSE_EPOCHS = 20
RECIPES = {  # name -> settings over COURSE
    'course': dict(COURSE, n_epochs=COURSE_EPOCHS, precision='fp32',
                   print_every=50, sample_size=train.NOTEBOOK['sample_size']),
    'default': dict(COURSE, **train.NOTEBOOK),
}
SEEDS = (42, 43)


def train_recipe(name, seed, data, args, device, log):
    """Train one recipe from seed epoch by epoch; returns its run: the
    training time (wall and process CPU seconds, cumulative) and fast score
    after every epoch."""
    settings = dict(RECIPES[name], n_epochs=args.epochs[name])
    size = settings['image_size']
    loader = (course_loader(data['dir'], settings['batch_size'], size, 0,
                            is_training_file(data['dir']), args.n_images)
              if name == 'course' else
              dcgan.get_dataloader(settings['batch_size'], size, data['dir'],
                                   args.n_images))
    amp_dtype = choose_precision(device, settings['precision'])
    # Seeded and drawn in the notebook's order (train.py's too): the data
    # first, then the seed, the networks, and the fixed noise of its preview,
    # which this script has no use for but draws all the same, so that the
    # shuffles after it are the notebook's. So the default's run for the
    # notebook's seed is the notebook's run, epoch for epoch; and a seed
    # starts both recipes from the same weights (they build the same
    # networks).
    seed_everything(seed)
    D, G = dcgan.build_networks(settings['z_size'], settings['conv_dim'],
                                size, device)
    d_opt, g_opt = dcgan.build_optimizers(
        D, G, settings['lr'], (settings['beta1'], settings['beta2']))
    torch.randn(settings['sample_size'], settings['z_size'],
                device=device)  # the notebook's fixed_z, not used here
    total = settings['n_epochs'] * len(loader)
    schedulers = ([linear_decay(opt, total) for opt in (d_opt, g_opt)]
                  if settings['lr_decay'] else [])
    average = weight_average(G, settings['ema_decay'])
    after_step = after_every_step(schedulers, G, average)
    run = {'recipe': name, 'seed': seed,
           'precision': precision_label(amp_dtype),
           'epochs': []}
    wall = cpu = 0.0
    for epoch in range(1, settings['n_epochs'] + 1):
        started, cpu_started = time.perf_counter(), time.process_time()
        dcgan.train_epoch(D, G, d_opt, g_opt, loader, settings, device,
                          amp_dtype, f'{name}, seed {seed}, epoch {epoch}',
                          after_step)
        wall += time.perf_counter() - started
        cpu += time.process_time() - cpu_started
        scored = (G if name == 'course' else
                  kept_generator(G, average, settings['z_size']))
        record = {'epoch': epoch, 'wall_s': round(wall, 2),
                  'cpu_s': round(cpu, 2), 'score': data['score'](scored)}
        run['epochs'].append(record)
        append_jsonl({'recipe': name, 'seed': seed, **record}, log)
        print(f"{name}, seed {seed}, epoch {epoch}: fast SWD "
              f"{record['score']:.1f} after {wall:.0f} s")
    return run


def time_to_reach(run, score):
    """The training wall seconds after which run first scored score or
    better, or None."""
    return next((record['wall_s'] for record in run['epochs']
                 if record['score'] <= score), None)


def summarise(runs):
    """Per seed: the course's best score, when it got there, when the
    default first matched it, and how many times sooner that was."""
    by_key = {(run['recipe'], run['seed']): run for run in runs}
    rows = []
    for seed in sorted({run['seed'] for run in runs}):
        course, default = by_key[('course', seed)], by_key[('default', seed)]
        best = min(course['epochs'], key=lambda record: record['score'])
        reached = time_to_reach(default, best['score'])
        rows.append({
            'seed': seed, 'course_best': best['score'],
            'course_best_epoch': best['epoch'],
            'course_best_s': best['wall_s'], 'default_s': reached,
            'default_best': min(r['score'] for r in default['epochs']),
            'speedup': (best['wall_s'] / reached if reached else None)})
    return rows


def plot(report, path):
    """Score against training minutes, one line per run, with each seed's
    course best and the real-vs-real floor as dotted lines; saved to path."""
    matplotlib.use('Agg')
    from matplotlib import pyplot as plt
    from matplotlib import ticker
    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {'course': 'tab:grey', 'default': 'tab:blue'}
    for run in report['runs']:
        minutes = [record['wall_s'] / 60 for record in run['epochs']]
        scores = [record['score'] for record in run['epochs']]
        style = '-' if run['seed'] == SEEDS[0] else '--'
        ax.plot(minutes, scores, style, marker='.', color=colours[run[
            'recipe']], label=f"{run['recipe']}, seed {run['seed']}")
    for row in report['summary']:
        ax.axhline(row['course_best'], color='tab:grey', lw=0.8, ls=':')
    ax.axhline(report['floor_fast'], color='black', lw=0.8, ls=':',
               label='real vs real')
    ax.set_yscale('log')
    for axis in (ax.yaxis.set_major_formatter, ax.yaxis.set_minor_formatter):
        axis(ticker.FormatStrFormatter('%g'))  # 20, 30, not 2 x 10^1
    ax.set_xlabel(f"training time (min), {report['cpu']}, "
                  f"{report['threads']} threads")
    ax.set_ylabel('fast SWD, held-out faces (lower is better)')
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def format_table(report):
    """The summary as the Markdown table of experiments/README.md."""
    lines = ['| seed | course: best fast SWD (epoch, time) | default: time '
             'to match it | times sooner | default: best fast SWD |',
             '|---:|---|---:|---:|---:|']
    for row in report['summary']:
        reached = (f"{row['default_s'] / 60:.1f} min" if row['default_s']
                   else 'not reached')
        sooner = f"{row['speedup']:.1f}×" if row['speedup'] else '-'
        lines.append(
            f"| {row['seed']} | {row['course_best']:.1f} (epoch "
            f"{row['course_best_epoch']}, {row['course_best_s'] / 60:.1f} "
            f"min) | {reached} | {sooner} | {row['default_best']:.1f} |")
    epochs = report['epochs']
    lines += ['', f"Measured on {report['cpu']}, {report['threads']} "
              f"threads, torch {report['torch']}; course {epochs['course']} "
              f"epochs, default {epochs['default']} epochs "
              f"({report['default_precision']}); times are training wall "
              f"time, scoring left out; real-vs-real fast SWD "
              f"{report['floor_fast']:.1f}."]
    return '\n'.join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        prog='python -m experiments.time_to_quality',
        description=__doc__.splitlines()[0])
    parser.add_argument('--data-dir', default=DEFAULT_DATA_DIR,
                        help='where the faces are, or are put by '
                             'prepare_data (FACEGEN_DATA or the download); '
                             'ImageFolder needs them in subfolders')
    parser.add_argument('--seeds', type=int, nargs='+', default=list(SEEDS))
    parser.add_argument('--json', type=Path,
                        help='write the figures here, and the plot beside '
                             'it as .png (the committed ones: '
                             'assets/time_to_quality.json)')
    parser.add_argument('--out-dir', type=Path, default=Path('ttq-runs'),
                        help="where every epoch's line is appended "
                             "(log.jsonl) as it is measured")
    parser.add_argument('--quick', action='store_true',
                        help='2 epochs each on 256 faces: does it run')
    args = parser.parse_args(argv)
    args.epochs = {name: recipe['n_epochs']
                   for name, recipe in RECIPES.items()}
    args.n_images, args.n_score = None, HELD_OUT_SIZE
    if args.quick:
        args.epochs = {name: 2 for name in RECIPES}
        args.n_images, args.n_score = 256, 64
    return args


def main(argv=None):
    args = parse_args(argv)
    device = choose_device()
    memory_kept = keep_freed_memory()  # as the notebook and train.py do
    data_dir = prepare_data(args.data_dir)
    size, z_size = COURSE['image_size'], COURSE['z_size']
    held_out = load_faces(data_dir, size, split='held_out')  # (M, 3, S, S)
    train_faces = load_faces(data_dir, size, split='train')  # (N, 3, S, S)
    floor = real_floor(held_out, train_faces, args.n_score, repeats=1,
                       metric='swd_fast',
                       cache_dir=metrics_cache_dir(data_dir))
    data = {'dir': data_dir,
            'score': epoch_scorer(held_out, z_size, args.n_score)}
    log = args.out_dir / 'log.jsonl'
    runs = []
    for index, seed in enumerate(args.seeds):  # who goes first alternates
        order = ('course', 'default') if index % 2 == 0 else ('default',
                                                               'course')
        runs += [train_recipe(name, seed, data, args, device, log)
                 for name in order]
    report = {
        'cpu': cpu_type(), 'threads': torch.get_num_threads(),
        'torch': torch.__version__, 'python': platform.python_version(),
        'freed_memory_kept': memory_kept, 'quick': args.quick,
        'epochs': args.epochs, 'n_score': args.n_score,
        'default_precision': next(run['precision'] for run in runs
                                  if run['recipe'] == 'default'),
        'floor_fast': floor, 'runs': runs, 'summary': summarise(runs)}
    print(format_table(report))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1), encoding='utf-8')
        picture = plot(report, args.json.with_suffix('.png'))
        print(f'wrote {args.json} and {picture}')
    return report


if __name__ == '__main__':
    main()
