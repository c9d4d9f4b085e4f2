"""benchmark.py --quick runs end to end on a small folder and reports every figure."""
import json

import benchmark
from conftest import write_jpegs


def test_quick_benchmark_reports_every_row(tmp_path, capsys):
    data_dir = tmp_path / 'faces'
    write_jpegs(data_dir / 'celeba', 160)
    out = tmp_path / 'bench.json'
    benchmark.main(['--quick', '--data-dir', str(data_dir), '--json', str(out)])

    report = json.loads(out.read_text())
    names = [row['name'] for row in report['rows']]
    assert names[:2] == ['course recipe, num_workers=0', 'course recipe, num_workers=2']
    assert sum(row['default'] for row in report['rows']) == 1
    for key in ('speedup', 'img_per_s', 'epoch_s', 'peak_rss_mb', 'flop_fraction', 'cpu'):
        assert key in report, key
    for row in report['rows']:
        assert row['img_per_s'] > 0 and row['epoch_s'] > 0
        assert 0 < row['flop_fraction'] < 1.5, row  # FLOPs and peak are of one scale
        assert row['peak_rss_mb'] > 50
    assert report['rows'][0]['speedup'] == 1.0
    # The course model's training step costs about 109 MFLOP per 32x32 image.
    assert 80 < report['train_mflop_per_image'] < 140
    assert report['cache_build_s'] > 0 and report['cache_load_s'] > 0
    table = capsys.readouterr().out
    assert '| course recipe, num_workers=0 |' in table and '(default)' in table
