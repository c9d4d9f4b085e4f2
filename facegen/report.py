"""The measured figures of a full run, written as JSON, and the tables made
from that JSON, so no figure is copied by hand: the notebook's committed run
(assets/run.json, in README.md) and the committed runs of train.py
(assets/train_*.json, each a run folder's run.json, in TRAINING.md)."""
import json
import platform
from pathlib import Path

import torch

from .files import atomic_write
from .runtime import cpu_type, precision_label


def run_figures(config, result, scores, seconds, epoch_floor, device,
                amp_dtype, wall_seconds):
    """The figures a run measured, as plain values: its settings, machine,
    time per epoch, score per epoch and final score (full_report's dict).
    wall_seconds: start to end, or None when unknown (a resumed run)."""
    machine = (torch.cuda.get_device_name(device) if device.type == 'cuda'
               else cpu_type())
    return {
        'config': dict(config),
        'machine': machine, 'threads': torch.get_num_threads(),
        'precision': precision_label(amp_dtype),
        'torch': torch.__version__, 'python': platform.python_version(),
        'epoch_seconds': [round(s, 1) for s in seconds],
        'train_seconds': round(sum(seconds), 1),
        'wall_seconds': (None if wall_seconds is None
                         else round(wall_seconds, 1)),
        'epoch_scores': [round(s, 2) for s in scores],
        'epoch_floor': round(epoch_floor, 2),
        'score': {key: (round(value, 2) if isinstance(value, float)
                        else value) for key, value in result.items()},
    }


def write_figures(path, figures):
    """Write the figures as indented JSON, atomically; returns path."""
    return atomic_write(path, lambda out: json.dump(figures, out, indent=1),
                        mode='w')


def _minutes(seconds):
    """'13 min 25 s'."""
    return f'{int(seconds // 60)} min {round(seconds % 60):d} s'


def results_table(figures):
    """The README's table of a committed run, from its figures."""
    score = figures['score']
    per_epoch = figures['train_seconds'] / len(figures['epoch_seconds'])
    rows = [
        ('machine', f"{figures['machine']}, {figures['threads']} threads, "
                    f"{figures['precision']}"),
        ('whole notebook', _minutes(figures['wall_seconds'])),
        ('training', f"{len(figures['epoch_seconds'])} epochs, "
                     f"{per_epoch:.1f} s each on average"),
        (f"SWD, {score['n']:,} generated vs {score['n']:,} held-out faces "
         f"(lower is better)", f"{score['swd']:.2f}"),
        ('real-vs-real floor', f"{score['floor']:.2f}"),
        ('score ÷ floor', f"{score['swd_over_floor']:.2f}×"),
        ('memorisation ratio (about 1: no copying)',
         f"{score['memorisation']:.2f}"),
    ]
    lines = ['| measure | committed run |', '|---|---:|']
    lines += [f'| {name} | {value} |' for name, value in rows]
    return '\n'.join(lines)


def runs_table(runs):
    """TRAINING.md's table of runs of train.py: one row per run's figures
    (its run.json), with the score's figures as in results_table. The first
    column names the run: image size, width, learning rate, seed, and
    whether the kept generator is the average of G's weights (with its
    decay) or G's last weights."""
    lines = ['| run | machine | training | SWD | floor | score ÷ floor '
             '| memorisation |', '|---|---|---|---:|---:|---:|---:|']
    for figures in runs:
        config, score = figures['config'], figures['score']
        size, epochs = config['image_size'], len(figures['epoch_seconds'])
        kept = (f"average of G ({config['ema_decay']:g})"
                if config.get('ema_decay') else 'last G')
        lr = f"lr {config['lr']:g}" + (
            ' falling to 0' if config['lr_decay'] else '')
        processes = figures.get('processes', 1)
        lines.append(
            f"| {size}×{size}, conv_dim {config['conv_dim']}, {lr}, seed "
            f"{config['seed']}, {kept} | "
            f"{figures['machine']}, {processes} × {figures['threads']} "
            f"threads, {figures['precision']} | {epochs} epochs, "
            f"{_minutes(figures['train_seconds'])} | {score['swd']:.2f} | "
            f"{score['floor']:.2f} | {score['swd_over_floor']:.2f}× | "
            f"{score['memorisation']:.2f} |")
    return '\n'.join(lines)


RESULTS_START = '<!-- results table: made from assets/run.json -->'
RESULTS_END = '<!-- end of results table -->'
RUNS_GLOB = 'train_*.json'  # assets/ files: run.json of committed train.py
RUNS_START = f'<!-- runs table: made from assets/{RUNS_GLOB} -->'
RUNS_END = '<!-- end of runs table -->'


def replace_between(text, start_marker, end_marker, table):
    """text with the part between two marker lines replaced by table (the
    markers stay); a ValueError says where to put them when they are
    missing or out of order."""
    start = text.find(start_marker)
    end = text.find(end_marker, max(start, 0))
    if start < 0 or end < 0:
        raise ValueError(
            f'The page has no place for the table: put the lines '
            f'{start_marker} and {end_marker} where it belongs, in that '
            f'order.')
    start += len(start_marker)
    return text[:start] + '\n' + table + '\n' + text[end:]


def with_results_table(readme_text, figures):
    """readme_text with the part between the results markers replaced by
    results_table(figures)."""
    return replace_between(readme_text, RESULTS_START, RESULTS_END,
                            results_table(figures))


def with_runs_table(text, runs):
    """text (TRAINING.md's) with the part between the runs markers replaced
    by runs_table(runs)."""
    return replace_between(text, RUNS_START, RUNS_END, runs_table(runs))


def committed_runs(assets):
    """The figures of the committed train.py runs in the folder assets
    (its train_*.json files, by name)."""
    return [json.loads(path.read_text('utf-8'))
            for path in sorted(Path(assets).glob(RUNS_GLOB))]


def refresh(path, make):
    """Rewrite the text file path as make(its text), atomically."""
    text = make(Path(path).read_text('utf-8'))
    atomic_write(path, lambda out: out.write(text), mode='w')


def main():
    """python -m facegen.report: refresh README.md's table from
    assets/run.json and TRAINING.md's from assets/train_*.json (all
    relative to the current folder)."""
    figures = json.loads(Path('assets/run.json').read_text('utf-8'))
    refresh('README.md', lambda text: with_results_table(text, figures))
    runs = committed_runs('assets')
    refresh('TRAINING.md', lambda text: with_runs_table(text, runs))
    print(f'README.md: table made from assets/run.json; TRAINING.md: from '
          f'assets/{RUNS_GLOB}')


if __name__ == '__main__':
    main()
