"""experiments/processes.py: --quick runs train.py in both layouts and
measures the shared cache; the ratio is the median of per-round ratios; the
rounds alternate; a mapped cache is shared between processes where a copy
is not; the README's table is the committed measurement."""
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import write_jpegs
from experiments import processes

FAKE_FACES = 1000  # 900 training faces, 100 held out
CACHE_SIZE = 64  # px: 900 x 3 x 64 x 64 bytes, an 11 MB cache
README = Path(processes.__file__).resolve().parent / 'README.md'
ASSET = processes.ROOT / 'assets' / 'processes.json'
needs_smaps = pytest.mark.skipif(
    not processes.SMAPS.exists(),
    reason='per-process memory is read from /proc/self/smaps_rollup (Linux)')


@pytest.fixture(scope='module')
def faces(tmp_path_factory):
    """A folder of fake faces laid out like the course data (64x64 JPEGs
    in faces/celeba/), with its cache beside it."""
    root = tmp_path_factory.mktemp('processes') / 'faces'
    write_jpegs(root / 'celeba', FAKE_FACES, size=CACHE_SIZE)
    return root


def test_quick_run_measures_both_layouts_and_the_cache(faces, tmp_path,
                                                       monkeypatch, capsys):
    monkeypatch.setenv('FACEGEN_DATA', str(faces))  # never the course zip
    asset_before = ASSET.exists() and ASSET.stat().st_mtime_ns
    out = tmp_path / 'processes.json'
    report = processes.main(['--quick', '--data-dir', str(faces),
                             '--json', str(out)])

    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert (ASSET.exists() and ASSET.stat().st_mtime_ns) == asset_before, (
        '--quick with --json elsewhere must leave assets/ alone')
    cores = len(processes.usable_cpus())
    assert report['settings'] == {
        'n_images': 256, 'image_size': 16, 'rounds': 1, 'batch_size': 32,
        'precision': 'fp32', 'precision_asked': 'fp32', 'epochs': 2,
        'n_score': 32, 'conv_dim': 8, 'z_size': 8, 'processes': cores,
        'quick': True}
    assert report['threads_per_core_layout']['usable_cpus'] == cores
    for key in ('cpu', 'torch'):
        assert report[key], key
    one, many = report['throughput']
    assert (one['layout'], one['processes'], one['threads_per_process']) \
        == ('one', 1, cores)
    assert (many['layout'], many['processes'],
            many['threads_per_process']) == ('many', cores, 1)
    for row in (one, many):
        assert len(row['images_per_second']) == 1, row
        assert row['median'] == row['images_per_second'][0] > 0, row
        assert row['wall_s'][0] > 0, row
    assert report['ratio']['median'] == pytest.approx(
        many['median'] / one['median'])

    cache = report['cache']
    n_train = FAKE_FACES - FAKE_FACES // 10
    assert cache['images'] == n_train
    assert cache['tensor_bytes'] == n_train * 3 * 16 * 16
    assert cache['file_bytes'] > cache['tensor_bytes']  # + names, checksum
    assert cache['load_s'] > 0
    assert cache['full_celeba']['bytes'] == 202_599 * 3 * 16 * 16
    if processes.SMAPS.exists():
        for mode in ('mapped', 'copied'):
            assert len(cache['memory'][mode]['processes']) == cores, mode
            assert cache['memory'][mode]['pss_mb'] > 0, mode

    table = capsys.readouterr().out
    assert f"| {one['name']} | {one['median']:,.0f} |" in table
    assert f"| {many['name']} | {many['median']:,.0f} |" in table
    assert f"**{report['ratio']['median']:.2f}x**" in table


def test_the_ratio_is_the_median_of_the_per_round_ratios():
    # Per round: 1.5, 0.5, 2.0. The ratio of the medians would be 1.0.
    summary = processes.ratio_summary([100.0, 200.0, 50.0],
                                      [150.0, 100.0, 100.0])
    assert summary['per_round'] == pytest.approx([1.5, 0.5, 2.0])
    assert summary['median'] == pytest.approx(1.5)
    assert (summary['min'], summary['max']) == pytest.approx((0.5, 2.0))


def test_rounds_alternate_which_layout_goes_first(monkeypatch):
    calls = []
    speeds = {'one': 100.0, 'many': 150.0}

    def fake_run(layout, args, data_dir):
        calls.append(layout)
        return speeds[layout] * len(calls), 1.0  # the machine speeds up

    monkeypatch.setattr(processes, 'run_layout', fake_run)
    args = SimpleNamespace(rounds=4, processes=2)
    rows, ratio = processes.measure_throughput(args, 'faces')

    assert calls == ['one', 'many', 'many', 'one'] * 2
    one, many = rows
    assert one['images_per_second'] == [100.0, 400.0, 500.0, 800.0]
    assert many['images_per_second'] == [300.0, 450.0, 900.0, 1050.0]
    assert one['median'] == 450.0 and many['median'] == 675.0
    assert ratio['per_round'] == pytest.approx([3.0, 1.125, 1.8, 1.3125])
    assert ratio['median'] == pytest.approx((1.3125 + 1.8) / 2)


def test_the_layouts_run_train_py_as_asked(tmp_path):
    args = SimpleNamespace(epochs=2, n_images=4096, n_score=256,
                           precision='bf16', image_size=32, batch_size=128,
                           conv_dim=32, z_size=100)
    options = processes.train_args(args, tmp_path / 'faces', tmp_path / 'r')
    assert options[options.index('--batch-size') + 1] == '128'
    assert options[options.index('--precision') + 1] == 'bf16'
    command, env = processes.layout_command('one', 2, options)
    assert command == [sys.executable, 'train.py', *options]
    assert env['OMP_NUM_THREADS'] == '2'
    command, env = processes.layout_command('many', 2, options)
    assert command == [sys.executable, '-m', 'torch.distributed.run',
                       '--standalone', '--nproc_per_node=2', 'train.py',
                       *options]
    assert env['OMP_NUM_THREADS'] == '1'


def test_a_failed_run_shows_why():
    command = [sys.executable, '-c',
               'import sys; print("progress"); '
               'sys.exit("train.py: --batch-size 129 cannot be split")']
    with pytest.raises(RuntimeError, match='cannot be split') as failure:
        processes.run_command(command, {})
    assert 'exit status 1' in str(failure.value)


def test_the_batch_must_split_across_the_processes(monkeypatch):
    monkeypatch.setattr(processes, 'usable_cpus', lambda: [0, 1])
    with pytest.raises(SystemExit):
        processes.parse_args(['--batch-size', '129'])
    assert processes.parse_args(['--batch-size', '130']).processes == 2


@needs_smaps
def test_mapped_faces_are_shared_and_copied_ones_are_not(faces):
    cache = processes.measure_cache(faces, CACHE_SIZE, 2)
    size_mb = cache['tensor_bytes'] / 2**20
    assert size_mb > 10, 'the fake faces should make a cache of a few MB'
    mapped, copied = cache['memory']['mapped'], cache['memory']['copied']
    message = (f'{size_mb:.1f} MB of faces in 2 processes: mapped added '
               f'{mapped["private_added_mb"]:.1f} MB private and '
               f'{mapped["pss_added_mb"]:.1f} MB Pss to each, copied '
               f'{copied["private_added_mb"]:.1f} and '
               f'{copied["pss_added_mb"]:.1f}')
    # A copy is each process's own; a mapped page is shared, and each of
    # the 2 processes is charged half of it.
    assert copied['private_added_mb'] > 0.8 * size_mb, message
    assert mapped['private_added_mb'] < 0.25 * size_mb, message
    assert copied['pss_added_mb'] > 0.8 * size_mb, message
    assert 0.3 * size_mb < mapped['pss_added_mb'] < 0.8 * size_mb, message


@needs_smaps
def test_a_failing_cache_process_shows_why_and_ends(tmp_path):
    """The workers' error comes back whole, and none is left waiting at a
    barrier."""
    with pytest.raises(RuntimeError, match='There is no folder'):
        processes.measure_sharing(tmp_path / 'missing', 16, 2, 'mapped')


def test_without_smaps_rollup_the_memory_is_skipped(faces, tmp_path):
    cache = processes.measure_cache(faces, 16, 2, smaps=tmp_path / 'none')
    assert cache['memory'] is None
    assert 'does not exist' in cache['memory_skipped']
    assert cache['file_bytes'] > 0
    assert 'not measured' in '\n'.join(processes.format_cache(cache))


def fake_report():
    """A report as run() returns it, with made-up figures."""
    def memory(private, pss, private_added, pss_added):
        return {'private_mb': private, 'pss_mb': pss,
                'private_added_mb': private_added, 'pss_added_mb': pss_added,
                'processes': []}
    return {
        'cpu': 'AMD EPYC (AVX2)', 'torch': '2.14.1', 'python': '3.11.7',
        'threads_per_core_layout': {'usable_cpus': 2, 'physical_cores': 1,
                                    'threads_per_core': 2.0},
        'settings': {'n_images': 4096, 'image_size': 32, 'rounds': 3,
                     'batch_size': 128, 'precision': 'bf16',
                     'precision_asked': 'auto', 'epochs': 2,
                     'n_score': 256, 'conv_dim': 32, 'z_size': 100,
                     'processes': 2, 'quick': False},
        'throughput': [
            {'layout': 'one', 'name': '1 process x 2 threads',
             'processes': 1, 'threads_per_process': 2,
             'images_per_second': [1712.3, 1650.0, 1801.9], 'median': 1712.3,
             'wall_s': [20.0, 21.0, 19.0]},
            {'layout': 'many', 'name': '2 processes x 1 thread',
             'processes': 2, 'threads_per_process': 1,
             'images_per_second': [1403.0, 1388.8, 1500.2], 'median': 1403.0,
             'wall_s': [25.0, 24.0, 26.0]}],
        'ratio': {'per_round': [0.819, 0.842, 0.833], 'median': 0.833,
                  'min': 0.819, 'max': 0.842},
        'cache': {
            'images': 30_000, 'image_size': 32, 'tensor_bytes': 92_160_000,
            'file_bytes': 92_897_123, 'load_s': 0.061, 'n_processes': 2,
            'full_celeba': {'images': 202_599, 'bytes': 622_384_128,
                            'how': 'arithmetic, not measured: 202,599 x 3 '
                                   'x 32 x 32 bytes'},
            'memory': {'mapped': memory(210.4, 262.5, 0.3, 44.2),
                       'copied': memory(298.7, 306.9, 88.6, 88.4)}},
    }


def test_format_table_shows_every_figure():
    table = processes.format_table(fake_report())
    for text in ('| 1 process x 2 threads | 1,712 | 1,712, 1,650, 1,802 |',
                 '| 2 processes x 1 thread | 1,403 | 1,403, 1,389, 1,500 |',
                 '**0.83x**', 'range 0.82-0.84', 'AMD EPYC (AVX2)',
                 '2 usable CPUs on 1 physical core(s) (2 hardware threads',
                 '4,096 faces at 32x32', 'batch 128', 'bf16',
                 '| mapped from the cache (load_faces) | 210.4 | 262.5 | '
                 '0.3 | 44.2 |',
                 '| copied into each process | 298.7 | 306.9 | 88.6 | '
                 '88.4 |',
                 'in 2 processes', '88.6 MB for 30,000 training faces',
                 '0.06 s', '594 MB', 'arithmetic, not measured'):
        assert text in table, f'{text!r} is missing from:\n{table}'


def test_with_table_fills_only_between_the_markers():
    report = fake_report()
    text = (f'# Title\n\nbefore\n{processes.TABLE_START}\nto be measured\n'
            f'{processes.TABLE_END}\nafter\n')
    filled = processes.with_table(text, report)
    assert filled == (f'# Title\n\nbefore\n{processes.TABLE_START}\n'
                      f'{processes.format_table(report)}\n'
                      f'{processes.TABLE_END}\nafter\n')
    assert processes.with_table(filled, report) == filled  # refills alike
    with pytest.raises(ValueError, match='no place for the table'):
        processes.with_table('# Title\n', report)


def test_readme_has_a_place_for_the_table():
    readme = README.read_text(encoding='utf-8')
    assert 0 <= readme.find(processes.TABLE_START) \
        < readme.find(processes.TABLE_END), (
        f'experiments/README.md needs {processes.TABLE_START} and '
        f'{processes.TABLE_END}, in that order, for with_table')


@pytest.mark.skipif(not ASSET.exists(),
                    reason='assets/processes.json is not measured yet')
def test_readme_table_is_the_committed_measurement():
    report = json.loads(ASSET.read_text(encoding='utf-8'))
    readme = README.read_text(encoding='utf-8')
    assert processes.with_table(readme, report) == readme, (
        'experiments/README.md differs from format_table of '
        'assets/processes.json: fill it with python -c "from experiments '
        'import processes as p; import json, pathlib; r = '
        'pathlib.Path(\'experiments/README.md\'); r.write_text(p.with_table('
        'r.read_text(), json.loads(pathlib.Path(\'assets/processes.json\')'
        '.read_text())))"')


@pytest.mark.skipif(not ASSET.exists(),
                    reason='assets/processes.json is not measured yet')
def test_training_guide_quotes_the_measured_ratio():
    report = json.loads(ASSET.read_text(encoding='utf-8'))
    guide = (README.parents[1] / 'TRAINING.md').read_text(encoding='utf-8')
    section = guide[guide.index('## Many processes'):]
    ratio = f"{report['ratio']['median']:.2f}×"
    assert ratio in section[:section.index('\n## ', 1)], (
        f'TRAINING.md should give the measured {ratio} of '
        f'assets/processes.json')
