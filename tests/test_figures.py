"""Figures the code measured reach the README and the notebook's text only
through the JSON it wrote: a test holds each copy to its source."""
import json
import re
from pathlib import Path

import pytest
import torch

from conftest import notebook_cells
from facegen import report

ROOT = Path(__file__).resolve().parents[1]
FIGURES = json.loads((ROOT / 'assets' / 'run.json').read_text('utf-8'))


def test_readme_results_table_is_made_from_run_json():
    readme = (ROOT / 'README.md').read_text(encoding='utf-8')
    assert report.with_results_table(readme, FIGURES) == readme, (
        'README.md differs from assets/run.json: run python -m facegen.report')


def test_training_guide_runs_table_is_made_from_the_committed_train_runs():
    paths = sorted((ROOT / 'assets').glob(report.RUNS_GLOB))
    assert paths, f'no assets/{report.RUNS_GLOB}: the 64 px run is missing'
    runs = report.committed_runs(ROOT / 'assets')
    guide = (ROOT / 'TRAINING.md').read_text(encoding='utf-8')
    assert report.with_runs_table(guide, runs) == guide, (
        'TRAINING.md differs from assets/train_*.json: run python -m '
        'facegen.report')
    for path, figures in zip(paths, runs):
        assert not figures['config']['quick'], path.name
        assert figures['command'].startswith('train.py '), path.name
        picture = path.with_suffix('.png')  # its faces, shown beside it
        assert picture.is_file() and f'assets/{picture.name}' in guide


def test_train_py_repeats_the_committed_notebook_run():
    """TRAINING.md says so: train.py seeds where the notebook seeds, so a
    committed train.py run with the notebook's settings on the same kind of
    machine is the same run, score for score."""
    same = [figures for figures in report.committed_runs(ROOT / 'assets')
            if all(figures[key] == FIGURES[key] for key in
                   ('config', 'machine', 'threads', 'precision', 'torch'))]
    assert same, 'no committed train.py run with the notebook\'s settings'
    for figures in same:
        assert figures['epoch_scores'] == FIGURES['epoch_scores']
        assert figures['score'] == FIGURES['score']


def guide_section(start, end):
    """TRAINING.md's text from the paragraph that starts with start up to
    the one that starts with end (or the next blank line when end is
    None)."""
    guide = (ROOT / 'TRAINING.md').read_text(encoding='utf-8')
    section = guide[guide.index(start):]
    return section[:section.index(end or '\n\n')]


def score_ratio(run):
    """A committed run's score over the real-vs-real floor."""
    return run['score']['swd_over_floor']


def same_recipe(a, b):
    """True when two committed runs differ in their seed only (precision
    'auto' and the format it chose count as the same)."""
    def recipe(run):
        return ({**run['config'], 'seed': None, 'precision': None},
                run['machine'], run['precision'])
    return recipe(a) == recipe(b)


@pytest.mark.parametrize('start, end', [('**fp32 or bf16.**', None),
                                        ('**64 px.**', '**fp32 or bf16.**')])
def test_training_guide_quotes_the_committed_runs(start, end):
    """TRAINING.md's comparisons of committed runs (bf16 against fp32 at
    32 px, the recipes at 64 px): each score ratio they give is a committed
    run's, or the difference between two runs of one recipe (the spread
    between seeds); each time per epoch a committed run's average, and each
    time in minutes a committed run's training time."""
    text = guide_section(start, end)
    runs = report.committed_runs(ROOT / 'assets')
    ratios = {f'{score_ratio(run):.2f}' for run in runs}
    spreads = {f'{abs(score_ratio(a) - score_ratio(b)):.2f}'
               for a in runs for b in runs if same_recipe(a, b)}
    epoch_s = {f"{run['train_seconds'] / len(run['epoch_seconds']):.1f}"
               for run in runs}
    quoted = set(re.findall(r'(\d+\.\d+)×', text))
    unknown = quoted - ratios - spreads
    assert len(quoted) >= 4 and not unknown, unknown
    seconds = re.findall(r'(\d+\.\d+) (?:to (\d+\.\d+) )?s\b', text)
    quoted = {number for pair in seconds for number in pair if number}
    assert quoted and quoted <= epoch_s, quoted - epoch_s
    minutes = {str(round(run['train_seconds'] / 60)) for run in runs}
    quoted = set(re.findall(r'\b(\d+) min\b', text))
    assert quoted <= minutes, quoted - minutes  # training time, rounded


def test_run_json_belongs_to_the_published_generator():
    state = torch.load(ROOT / 'assets' / 'generator.pt', weights_only=True)
    for key in ('swd', 'floor', 'memorisation'):
        assert FIGURES['score'][key] == round(state['score'][key], 2), key
    assert FIGURES['config']['n_epochs'] == len(FIGURES['epoch_scores'])
    assert not FIGURES['config']['quick']


def test_the_notebook_printed_the_committed_figures():
    code = notebook_cells('code')
    printed = ''.join(''.join(out.get('text', ''))
                      for cell in code for out in cell.get('outputs', []))
    assert report.results_table(FIGURES) in printed


def measured_values():
    """Every number in run.json, as the text would round it."""
    values = set()

    def walk(item):
        if isinstance(item, dict):
            for value in item.values():
                walk(value)
        elif isinstance(item, list):
            for value in item:
                walk(value)
        elif isinstance(item, (int, float)) and not isinstance(item, bool):
            for digits in (0, 1, 2):
                values.add(f'{item:.{digits}f}')
    walk(FIGURES)
    for figures in report.committed_runs(ROOT / 'assets'):  # train.py's
        walk(figures)
    score = FIGURES['score']
    values.add(f"{score['swd'] / FIGURES['score']['floor']:.1f}")
    return values


def strengths_text():
    cells = [''.join(cell['source']) for cell in notebook_cells('markdown')]
    return next(text for text in cells
                if text.startswith('## Strengths and weaknesses'))


@pytest.mark.parametrize('number', sorted(set(re.findall(
    r'(?<![\w.])\d+\.\d+(?![\w.])', strengths_text()))))
def test_measured_numbers_in_the_notebook_text_come_from_run_json(number):
    assert number in measured_values(), (
        f'{number} in "Strengths and weaknesses" is not in assets/run.json '
        f'or assets/train_*.json')


def test_experiments_readme_comparison_table_is_made_from_compare_json():
    from experiments import compare
    saved = json.loads((ROOT / 'assets' / 'compare.json').read_text('utf-8'))
    table = compare.markdown_table(saved['rows'], saved['floor_swd'])
    readme = (ROOT / 'experiments' / 'README.md').read_text(encoding='utf-8')
    assert table in readme, 'copy the table python -m experiments.compare gives'


BATCH_NORM_MOMENTUM = '0.1'  # a setting the text explains, not a result


def cells_citing_the_experiments():
    return [''.join(cell['source']) for cell in notebook_cells('markdown')
            if 'experiments/README.md' in ''.join(cell['source'])
            and not ''.join(cell['source']).startswith('## Strengths')]


@pytest.mark.parametrize('number', sorted({
    number for text in cells_citing_the_experiments()
    for number in re.findall(r'(?<![\w.])\d+\.\d+(?![\w.])', text)}))
def test_comparison_figures_in_the_notebook_text_come_from_compare_json(
        number):
    saved = json.loads((ROOT / 'assets' / 'compare.json').read_text('utf-8'))
    swd = {f"{row['swd']:.1f}" for row in saved['rows']}
    assert number in swd | {BATCH_NORM_MOMENTUM}, (
        f'{number} is not an SWD in assets/compare.json')
