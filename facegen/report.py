"""The measured figures of a full run, written as JSON, and the README's
results table made from that JSON, so no figure is copied by hand."""
import json
import platform

import torch

from .files import atomic_write
from .runtime import cpu_type


def run_figures(config, result, scores, seconds, epoch_floor, device,
                amp_dtype, wall_seconds):
    """The figures a run measured, as plain values: its settings, machine,
    time per epoch, score per epoch and final score (full_report's dict)."""
    machine = (torch.cuda.get_device_name(device) if device.type == 'cuda'
               else cpu_type())
    return {
        'config': dict(config),
        'machine': machine, 'threads': torch.get_num_threads(),
        'precision': 'fp32' if amp_dtype is None else 'bf16 autocast',
        'torch': torch.__version__, 'python': platform.python_version(),
        'epoch_seconds': [round(s, 1) for s in seconds],
        'train_seconds': round(sum(seconds), 1),
        'wall_seconds': round(wall_seconds, 1),
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


RESULTS_START = '<!-- results table: made from assets/run.json -->'
RESULTS_END = '<!-- end of results table -->'


def with_results_table(readme_text, figures):
    """readme_text with the part between the results markers replaced by
    results_table(figures)."""
    start = readme_text.index(RESULTS_START) + len(RESULTS_START)
    end = readme_text.index(RESULTS_END)
    return (readme_text[:start] + '\n' + results_table(figures) + '\n'
            + readme_text[end:])


def main():
    """python -m facegen.report: refresh the README's results table from
    assets/run.json (both relative to the current folder)."""
    with open('assets/run.json', encoding='utf-8') as f:
        figures = json.load(f)
    with open('README.md', encoding='utf-8') as f:
        text = f.read()
    atomic_write('README.md', lambda out: out.write(
        with_results_table(text, figures)), mode='w')
    print('README.md: results table made from assets/run.json')


if __name__ == '__main__':
    main()
