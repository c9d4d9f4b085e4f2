"""Train the course recipe and candidate improvements for the same CPU time,
then score each.

Every variant starts from the course recipe (facegen.settings.COURSE:
conv_dim 32, z 100, batch 128, Adam with the DCGAN paper's learning rate and
betas, BCE, 32x32) and changes one thing, or a few for the combined rows.
Each trains on the training split for the same budget of process CPU time
(so other programs on the machine do not tilt the comparison), then 2,600 of
its faces are scored against the 2,600 held-out faces with the sliced
Wasserstein distance (lower is better) beside the real-vs-real floor, and
checked for memorisation.

Run from the project root (see experiments/README.md):

    python -m experiments.compare              # every variant; ~4 min each
    python -m experiments.compare --variants course ema  # some of them
    python -m experiments.compare --json assets/compare.json  # + the figures
    python -m experiments.compare --quick      # seconds each: does it run (CI)
"""
import argparse
import json
import platform
import time
from pathlib import Path

import torch
from torch import nn, optim
from torch.nn.utils.parametrizations import spectral_norm
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

import dcgan
from facegen.faces import HELD_OUT_SIZE, load_faces
from facegen.fetch import prepare_data
from facegen.metrics import append_jsonl
from facegen.run import linear_decay, save_generator
from facegen.runtime import (choose_device, choose_precision, cpu_type,
                             keep_freed_memory, precision_label,
                             seed_everything)
from facegen.sampling import recalibrate_batch_norm
from facegen.score import real_floor, score_generator
from facegen.settings import COURSE, DEFAULT_DATA_DIR

# The course recipe with every variant's switch off. D and G have a learning
# rate each (lr_d, lr_g: the 'ttur' variant sets them apart), both COURSE's.
BASELINE = {key: value for key, value in COURSE.items() if key != 'lr'}
BASELINE.update(lr_d=COURSE['lr'], lr_g=COURSE['lr'], precision='fp32',
                ema=None, spectral_norm=False, recalibrate=False)
# The falling learning rate steps once per this share of the CPU budget.
DECAY_TICKS = 1000

# name -> (what it changes, its settings over BASELINE)
VARIANTS = {
    'course': ('the course recipe, fp32', {}),
    'fast': ('+ the fast path (automatic precision)', dict(precision='auto')),
    'smooth': ('+ fast, real labels 0.9', dict(precision='auto', smooth=True)),
    'ttur': ('+ fast, lr D 4e-4 / G 1e-4',
             dict(precision='auto', lr_d=4e-4, lr_g=1e-4)),
    'ema': ('+ fast, EMA of G (0.999)', dict(precision='auto', ema=0.999)),
    'sn': ('+ fast, spectral norm in D',
           dict(precision='auto', spectral_norm=True)),
    'wide': ('+ fast, conv_dim 64', dict(precision='auto', conv_dim=64)),
    'fp32_decay_recal': (
        '+ falling learning rates, statistics re-estimated (fp32)',
        dict(lr_decay=True, recalibrate=True)),
    'recal': ('+ fast, batch-norm statistics re-estimated',
              dict(precision='auto', recalibrate=True)),
    'ema_recal': ('+ fast, EMA of G (0.995), statistics re-estimated',
                  dict(precision='auto', ema=0.995, recalibrate=True)),
    'decay_recal': (
        '+ fast, falling learning rates, statistics re-estimated',
        dict(precision='auto', lr_decay=True, recalibrate=True)),
    'sn_decay_recal': (
        '+ fast, spectral norm in D, falling learning rates, statistics '
        're-estimated',
        dict(precision='auto', spectral_norm=True, lr_decay=True,
             recalibrate=True)),
}


def with_spectral_norm(D):
    """D with spectral normalisation on every conv and linear layer and no
    batch norm (Miyato et al. 2018): the norm alone keeps D's gradients in
    check."""
    for block in D.features:
        if isinstance(block[1], nn.BatchNorm2d):
            block[1] = nn.Identity()
        block[0] = spectral_norm(block[0])
    D.classify = spectral_norm(D.classify)
    return D


def build(settings, device):
    """D, G, their optimizers, and the EMA copy of G when the variant
    averages (else None)."""
    D, G = dcgan.build_networks(settings['z_size'], settings['conv_dim'],
                                settings['image_size'], device)
    if settings['spectral_norm']:
        D = with_spectral_norm(D).to(device)
    betas = (settings['beta1'], settings['beta2'])
    d_opt = optim.Adam(D.parameters(), lr=settings['lr_d'], betas=betas)
    g_opt = optim.Adam(G.parameters(), lr=settings['lr_g'], betas=betas)
    ema = None
    if settings['ema']:
        ema = AveragedModel(G, use_buffers=True,
                            multi_avg_fn=get_ema_multi_avg_fn(settings['ema']))
    return D, G, d_opt, g_opt, ema


def train_for(budget_s, nets, loader, settings, amp_dtype, device):
    """Train until budget_s seconds of process CPU time are spent; returns
    the steps. With lr_decay, both learning rates fall linearly with the CPU
    time spent, to 0 at the end of the budget (in DECAY_TICKS steps)."""
    D, G, d_opt, g_opt, ema = nets
    schedulers = ([linear_decay(opt, DECAY_TICKS) for opt in (d_opt, g_opt)]
                  if settings['lr_decay'] else [])
    start, steps = time.process_time(), 0
    bar = tqdm(total=round(budget_s), unit='cpu-s', leave=False)
    while True:
        for real, _ in loader:
            real = real.to(device, memory_format=torch.channels_last,
                           non_blocking=True)
            dcgan.train_step(D, G, d_opt, g_opt, real, settings['z_size'],
                             settings['smooth'], amp_dtype)
            if ema is not None:
                ema.update_parameters(G)
            steps += 1
            spent = time.process_time() - start
            bar.update(round(spent) - bar.n)
            if spent >= budget_s:
                bar.close()
                return steps
            # lr = start value x share of the budget left (to 1/DECAY_TICKS)
            due = int(DECAY_TICKS * spent / budget_s)
            for scheduler in schedulers:
                while scheduler.last_epoch < due:
                    scheduler.step()


def run_variant(name, budget_s, data, device, amp_dtypes, args):
    """Train one variant for budget_s CPU seconds and score it; returns its
    row."""
    what, changes = VARIANTS[name]
    settings = {**BASELINE, **changes}
    seed_everything(args.seed)
    amp_dtype = amp_dtypes[settings['precision']]
    loader = dcgan.get_dataloader(  # the training split, from the cache
        settings['batch_size'], settings['image_size'], data['dir'])
    nets = build(settings, device)
    wall = time.perf_counter()
    steps = train_for(budget_s, nets, loader, settings, amp_dtype, device)
    wall = time.perf_counter() - wall
    scored = nets[4].module if nets[4] is not None else nets[1]
    if settings['recalibrate']:
        recalibrate_batch_norm(scored, settings['z_size'])
    generator_config = {key: settings[key]
                        for key in ('z_size', 'conv_dim', 'image_size')}
    score = score_generator(scored, settings['z_size'], data['held_out'],
                            data['train'], args.n)[0]
    row = {'variant': name, 'what': what,
           'precision': precision_label(amp_dtype), 'steps': steps,
           'epochs': round(steps / len(loader), 2), 'cpu_s': budget_s,
           'wall_s': round(wall, 1), 'seed': args.seed, **score}
    out_dir = Path(args.out_dir)
    save_generator(out_dir / f'{name}.pt', scored, generator_config, row,
                   data_dir=data['dir'])
    # one line per variant, kept if a later one fails
    append_jsonl(row, out_dir / 'results.jsonl')
    print(f"{name:>10}: SWD {row['swd']:6.2f}, memorisation "
          f"{row['memorisation']:.2f}, {row['epochs']} epochs in "
          f"{row['wall_s']} s")
    return row


def markdown_table(rows, floor_swd):
    """The results as the Markdown table of experiments/README.md, best
    score first. Each row is named by VARIANTS' words for its settings
    today, not the words saved with it."""
    lines = ['| variant | seed | SWD | × floor | memorisation | epochs |',
             '|---|---:|---:|---:|---:|---:|']
    for row in sorted(rows, key=lambda r: r['swd']):
        what = VARIANTS[row['variant']][0]
        lines.append(f"| {what} | {row['seed']} | {row['swd']:.1f} | "
                     f"{row['swd'] / floor_swd:.2f} | "
                     f"{row['memorisation']:.2f} | {row['epochs']:.2f} |")
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(prog='python -m experiments.compare',
                                     description=__doc__.splitlines()[0])
    parser.add_argument('--variants', nargs='+', choices=list(VARIANTS),
                        default=list(VARIANTS))
    parser.add_argument('--budget-s', type=float, default=400.0,
                        help='process CPU seconds of training per variant '
                             '(default 400)')
    parser.add_argument('--n', type=int, default=HELD_OUT_SIZE,
                        help='faces scored per variant (default: all '
                             'held-out ones)')
    parser.add_argument('--data-dir', default=DEFAULT_DATA_DIR)
    parser.add_argument('--seed', type=int, default=42)
    parser.add_argument('--json',
                        help='also write the rows and the floor to this file '
                             '(the committed ones: assets/compare.json)')
    parser.add_argument('--out-dir', default='compare-runs',
                        help="where each variant's scored generator and its "
                             "row (results.jsonl) are saved")
    parser.add_argument('--quick', action='store_true',
                        help='2 CPU seconds, 256 faces')
    args = parser.parse_args(argv)
    budget_s = 2.0 if args.quick else args.budget_s
    if args.quick:
        args.n = min(args.n, 256)
    device = choose_device()
    memory_kept = keep_freed_memory()  # as the notebook and train.py do
    data_dir = prepare_data(args.data_dir)
    data = {split: load_faces(data_dir, COURSE['image_size'], split=split)
            for split in ('train', 'held_out')}
    data['dir'] = data_dir
    args.n = min(args.n, len(data['held_out']))
    floor_swd = real_floor(data['held_out'], data['train'], args.n)
    print(f'real-vs-real floor: SWD {floor_swd:.2f} ({args.n} held-out vs '
          f'{args.n} training faces)')
    # chosen once, so every 'auto' variant runs in the same number format
    amp_dtypes = {precision: choose_precision(device, precision)
                  for precision in ('fp32', 'auto')}
    rows = [run_variant(name, budget_s, data, device, amp_dtypes, args)
            for name in args.variants]
    print(markdown_table(rows, floor_swd))
    if args.json:
        with open(args.json, 'w', encoding='utf-8') as out:
            json.dump({'floor_swd': floor_swd, 'budget_cpu_s': budget_s,
                       'n': args.n, 'cpu': cpu_type(),
                       'machine': platform.machine(),
                       'freed_memory_kept': memory_kept, 'rows': rows},
                      out, indent=1)
    return rows


if __name__ == '__main__':
    main()
