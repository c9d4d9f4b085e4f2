"""experiments/benchmark.py: --quick runs end to end and reports every
figure; the interleaved timing keeps a drifting machine out of the
speed-ups."""
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from conftest import write_jpegs
from experiments import benchmark


def test_quick_benchmark_reports_every_row(tmp_path, capsys):
    data_dir = tmp_path / 'faces'
    write_jpegs(data_dir / 'celeba', 160)
    out = tmp_path / 'bench.json'
    benchmark.main(['--quick', '--data-dir', str(data_dir),
                    '--json', str(out)])

    report = json.loads(out.read_text())
    names = [row['name'] for row in report['rows']]
    assert names[:2] == ['course recipe, num_workers=0',
                         'course recipe, num_workers=2']
    assert sum(row['default'] for row in report['rows']) == 1
    for key in ('speedup', 'img_per_s', 'epoch_s', 'peak_rss_mb',
                'flop_fraction', 'cpu'):
        assert key in report, key
    for row in report['rows']:
        assert row['img_per_s'] > 0 and row['epoch_s'] > 0
        # FLOPs and peak are of one scale
        assert 0 < row['flop_fraction'] < 1.5, row
        assert row['peak_rss_mb'] > 50
        assert row['speedup_min'] <= row['speedup'] <= row['speedup_max']
    assert report['rows'][0]['speedup'] == 1.0
    assert report['rounds'] == 3
    # The course model's training step costs about 109 MFLOP per 32x32 image.
    assert 80 < report['train_mflop_per_image'] < 140
    assert report['cache_build_s'] > 0 and report['cache_load_s'] > 0
    table = capsys.readouterr().out
    assert '| course recipe, num_workers=0 |' in table
    assert '(default)' in table


class DriftingClock:
    """A fake perf_counter: each step advances it by the row's cost times a
    slowdown that grows with every round, like a shared CPU getting busier
    during the run."""

    def __init__(self):
        self.now, self.slowdown = 0.0, 1.0

    def __call__(self):
        return self.now

    def stepper(self, cost, log, name):
        def step():
            log.append(name)
            self.now += cost * self.slowdown
        return step


def test_interleaved_rounds_cancel_a_drifting_machine(monkeypatch):
    clock = DriftingClock()
    monkeypatch.setattr(benchmark.time, 'perf_counter', clock)
    monkeypatch.setattr(benchmark, 'peak_rss_mb', lambda: 100.0)
    log = []
    steppers = {'course': clock.stepper(2.0, log, 'course'),
                'fast': clock.stepper(1.0, log, 'fast')}  # twice as fast
    args = SimpleNamespace(steps=12, rounds=4, batch_size=10)
    real_time_segment = benchmark.time_segment

    def segment_then_slow_down(step, n_steps, batch_size, device):
        result = real_time_segment(step, n_steps, batch_size, device)
        if len(log) % 6 == 0:  # after every round (2 rows x 3 steps) ...
            clock.slowdown *= 1.5  # ... the machine gets slower
        return result

    monkeypatch.setattr(benchmark, 'time_segment', segment_then_slow_down)
    rates, peaks = benchmark.time_interleaved(steppers, args,
                                              torch.device('cpu'))

    assert [len(r) for r in rates.values()] == [4, 4]  # every row and round
    assert log.count('course') == log.count('fast') == 12
    assert log[6:9] == ['fast'] * 3  # the second round starts with the other
    speedups = benchmark.round_speedups(rates['fast'], rates['course'])
    assert speedups == pytest.approx([2.0] * 4)
    assert peaks == {'course': 100.0, 'fast': 100.0}


def test_a_block_timed_row_is_set_against_the_course_median():
    assert benchmark.round_speedups([300.0], [100.0, 150.0, 200.0]) == [2.0]


def test_rounds_must_fit_the_steps():
    with pytest.raises(SystemExit):
        benchmark.parse_args(['--steps', '4', '--rounds', '5'])


def test_the_course_rows_need_the_faces_in_subfolders(tmp_path):
    """ImageFolder reads only images in subfolders: a folder with the images
    directly in it is refused with a message, not half read."""
    write_jpegs(tmp_path / 'faces' / 'celeba', 2)
    assert benchmark.image_folder_root(tmp_path / 'faces') == tmp_path / 'faces'
    write_jpegs(tmp_path / 'flat', 2)
    with pytest.raises(ValueError, match='subfolder'):
        benchmark.image_folder_root(tmp_path / 'flat')


def test_readme_table_is_the_committed_benchmark():
    """experiments/README.md's speed table is format_table of
    assets/benchmark.json, row for row."""
    here = Path(benchmark.__file__).resolve().parent  # experiments/
    report = json.loads((here.parent / 'assets' / 'benchmark.json')
                        .read_text())
    readme = (here / 'README.md').read_text()
    table = [line for line in benchmark.format_table(report).splitlines()
             if line.startswith('|')]
    assert len(table) == 2 + len(report['rows'])
    for line in table:
        assert line in readme, (
            f'experiments/README.md speed table differs from '
            f'benchmark.json: {line}')
