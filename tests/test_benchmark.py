"""experiments/benchmark.py: --quick runs end to end and reports every
figure; the interleaved timing keeps a drifting machine out of the
speed-ups."""
import json
from dataclasses import replace
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
    # --precision and the notebook both say 'auto': one decision, one line
    assert table.count('Precision:') == 1


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

    def segment(cost, name):  # as a RowProcess times its row
        step = clock.stepper(cost, log, name)

        def timed(n_steps):
            result = benchmark.time_segment(step, n_steps, 10,
                                            torch.device('cpu'))
            if len(log) % 6 == 0:  # after every round (2 rows x 3 steps) ...
                clock.slowdown *= 1.5  # ... the machine gets slower
            return result
        return timed

    segments = {'course': segment(2.0, 'course'),
                'fast': segment(1.0, 'fast')}  # twice as fast
    args = SimpleNamespace(steps=12, rounds=4, batch_size=10)
    rates, peaks = benchmark.time_interleaved(segments, args)

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


def test_the_course_rows_leave_hidden_folders_out(tmp_path):
    """A cache that facegen left inside the data folder (when it was once
    given the images' subfolder) is neither a class nor an error."""
    write_jpegs(tmp_path / 'faces' / 'celeba', 4)
    (tmp_path / 'faces' / '.facegen-cache' / 'metrics').mkdir(parents=True)
    (tmp_path / 'faces' / '.ipynb_checkpoints').mkdir()
    loader = benchmark.course_loader(tmp_path / 'faces', 2, 16, 0)
    assert loader.dataset.classes == ['celeba']
    assert len(loader.dataset) == 4
    images, _ = next(iter(loader))
    assert images.shape == (2, 3, 16, 16)


def test_the_course_rows_need_a_visible_subfolder(tmp_path):
    (tmp_path / 'faces' / '.facegen-cache').mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match='no subfolder of images'):
        benchmark.course_loader(tmp_path / 'faces', 2, 16, 0)


ASSETS = Path(benchmark.__file__).resolve().parents[1] / 'assets'


@pytest.mark.parametrize('figures', sorted(ASSETS.glob('benchmark*.json')),
                         ids=lambda path: path.name)
def test_readme_tables_are_the_committed_benchmarks(figures):
    """experiments/README.md has a speed table for each committed benchmark
    (one per CPU type: assets/benchmark*.json), each format_table of its
    JSON row for row."""
    report = json.loads(figures.read_text())
    readme = (ASSETS.parent / 'experiments' / 'README.md').read_text()
    table = [line for line in benchmark.format_table(report).splitlines()
             if line.startswith('|')]
    tried = report.get('tried', [])  # its own table, headed, when measured
    tried_lines = 2 + len(tried) if tried else 0
    assert len(table) == 2 + len(report['rows']) + tried_lines
    for line in table:
        assert line in readme, (
            f'experiments/README.md speed table differs from '
            f'{figures.name}: {line}')


def test_every_cpu_type_is_committed():
    assert {path.name for path in ASSETS.glob('benchmark*.json')} == {
        'benchmark.json', 'benchmark_avx512.json', 'benchmark_amx.json'}


@pytest.mark.parametrize('glibc', [True, False])
def test_the_allocator_row_is_there_only_where_it_can_be(monkeypatch, glibc):
    monkeypatch.setattr(benchmark, 'can_keep_freed_memory', lambda: glibc)
    rows = benchmark.rows_for(torch.bfloat16)
    names = list(rows)
    assert names[0] == 'course recipe, num_workers=0'
    assert not rows[names[0]].keep_memory  # the course's allocator as is
    kept = [name for name in names if rows[name].keep_memory]
    assert bool(kept) == glibc
    assert all('freed memory kept' in name for name in kept)
    assert rows[names[-1]].amp_dtype == torch.bfloat16  # every change
    assert rows[names[-1]].keep_memory == glibc


@pytest.mark.parametrize('notebook', [None, torch.bfloat16])
def test_the_default_row_trains_in_the_notebooks_precision(notebook):
    rows = benchmark.rows_for(torch.bfloat16)
    name = benchmark.default_row(rows, notebook)
    assert rows[name].amp_dtype == notebook
    fastest_of_its_kind = [row for row in rows.values()
                           if row.amp_dtype == notebook][-1]
    assert rows[name] == fastest_of_its_kind
    assert rows[name].channels_last


def test_each_tried_row_is_the_default_row_with_one_change():
    rows = benchmark.rows_for(torch.bfloat16)
    default = benchmark.default_row(rows, None)
    tried = benchmark.tried_rows(rows, default)
    assert len(tried) == len(benchmark.TRIED)
    for (name, row), change in zip(tried.items(), benchmark.TRIED.values()):
        assert name.startswith(default + ', ')
        assert row != rows[default]
        assert replace(row, **{key: getattr(rows[default], key)
                               for key in change}) == rows[default]


def test_quick_benchmark_times_the_tried_rows_against_the_default(
        tmp_path, monkeypatch):
    """Each tried row is timed in the rotation and set against the default
    row round by round (torch.compile left out here, where it would
    compile the full-size course model in every run of the suite;
    test_a_compiled_row_trains runs it on a tiny one)."""
    monkeypatch.setattr(benchmark, 'TRIED',
                        {'fused Adam': dict(fused_adam=True)})
    data_dir = tmp_path / 'faces'
    write_jpegs(data_dir / 'celeba', 160)
    out = tmp_path / 'bench.json'
    benchmark.main(['--quick', '--tried', '--data-dir', str(data_dir),
                    '--json', str(out)])
    report = json.loads(out.read_text())
    default = next(row for row in report['rows'] if row['default'])
    [tried] = report['tried']
    assert tried['name'] == default['name'] + ', fused Adam'
    assert not tried['default']
    assert (tried['vs_default_min'] <= tried['vs_default']
            <= tried['vs_default_max'])
    assert tried['vs_default'] > 0
    assert f"| {tried['name']} |" in benchmark.format_table(report)


def test_a_compiled_row_trains(tmp_path):
    """make_stepper runs a torch.compile row's steps (a tiny model)."""
    write_jpegs(tmp_path / 'faces' / 'celeba', 8)
    loader = benchmark.course_loader(tmp_path / 'faces', 4, 16, 0)
    args = SimpleNamespace(batch_size=4, image_size=16, warmup=1, conv_dim=4,
                           z_size=4)
    row = benchmark.Row('image_folder', compiled=True, fused_adam=True)
    step = benchmark.make_stepper(loader, args, torch.device('cpu'), row)
    step()


def test_a_default_row_that_was_not_timed_is_an_error():
    with pytest.raises(ValueError, match='without --precision fp32'):
        benchmark.default_row(benchmark.rows_for(None), torch.bfloat16)


class FakeConn:
    """The child's end of a RowProcess pipe: asks for one segment of 2
    steps, then says stop; keeps what the row answers."""

    def __init__(self):
        self.requests, self.sent, self.closed = [2, None], [], False

    def recv(self):
        return self.requests.pop(0)

    def send(self, message):
        self.sent.append(message)

    def close(self):
        self.closed = True


@pytest.mark.parametrize('keep', [True, False])
def test_a_row_sets_its_own_allocator_only(monkeypatch, keep):
    calls, steps = [], []
    monkeypatch.setattr(benchmark, 'keep_freed_memory',
                        lambda: calls.append('kept'))
    monkeypatch.setattr(benchmark, 'row_loader', lambda *args: 'loader')
    monkeypatch.setattr(benchmark, 'make_stepper',
                        lambda *args: lambda: steps.append(1))
    conn = FakeConn()
    args = SimpleNamespace(batch_size=4)
    benchmark.serve_row(conn, benchmark.Row('decoded', keep_memory=keep),
                        args, 'data', None, torch.device('cpu'))
    assert calls == (['kept'] if keep else [])
    assert steps == [1, 1] and conn.closed
    assert conn.sent[0] == ('ready', None)
    kind, (img_per_s, peak_mb) = conn.sent[1]
    assert kind == 'timed' and img_per_s > 0 and peak_mb > 0


def test_a_failing_row_reports_its_process_error(tmp_path):
    """The row's error (here: faces not in a subfolder) reaches the parent
    with its message, not as a hang or a bare exit code."""
    write_jpegs(tmp_path / 'flat', 2)
    args = SimpleNamespace(batch_size=2, image_size=32, warmup=1,
                           conv_dim=8, z_size=4)
    with pytest.raises(RuntimeError, match='subfolder'):
        benchmark.RowProcess('course', benchmark.Row('image_folder'), args,
                             tmp_path / 'flat', None, torch.device('cpu'))
