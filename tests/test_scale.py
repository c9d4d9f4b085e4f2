"""experiments/scale.py: FLOPs counted, epochs worked out from them, and
the committed figures in the write-ups."""
import json
from pathlib import Path

import pytest

from experiments import scale

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / 'assets' / 'scale.json'

pytestmark = pytest.mark.usefixtures('one_thread')


def test_quick_run_measures_the_notebook_scale(capsys):
    report = scale.main(['--quick'])
    (row,) = report['rows']
    assert (row['image_size'], row['conv_dim']) == (32, 32)
    # Both networks, forward and backward, for one image: about 100 MFLOP.
    assert 90 < row['mflop_per_image'] < 110
    assert row['gflop_per_s'] == pytest.approx(
        row['mflop_per_image'] * row['img_per_s'] / 1e3)
    assert row['course_epoch_s'] == pytest.approx(30_000 / row['img_per_s'])
    assert row['celeba_epoch_s'] == pytest.approx(199_999 / row['img_per_s'])
    assert report['gpu_celeba_epoch_s'] == pytest.approx(
        row['celeba_epoch_tflop'] / 50)
    assert '| 32×32, 32 | 100 |' in capsys.readouterr().out


def test_flops_grow_with_the_square_of_the_width():
    """conv_dim doubles: all but the first and last layers have four times
    the multiply-adds, so the step costs a little under four times more."""
    counts = [scale.measure(scale.parse_args(['--quick']), 16, width,
                            scale.choose_device(), None)['mflop_per_image']
              for width in (8, 16)]
    assert 3 < counts[1] / counts[0] < 4


@pytest.mark.parametrize('seconds, text', [
    (4.24, '4.2 s'), (42.4, '42 s'), (142, '2.4 min'), (780, '13 min'),
    (9000, '2.5 h')])
def test_durations_read_at_a_glance(seconds, text):
    assert scale._duration(seconds) == text


@pytest.mark.skipif(not SAVED.exists(), reason='no committed measurement')
def test_write_ups_quote_the_committed_figures():
    report = json.loads(SAVED.read_text('utf-8'))
    assert not report.get('quick')
    experiments = (ROOT / 'experiments' / 'README.md').read_text('utf-8')
    assert scale.format_table(report) in experiments, (
        'copy the table python -m experiments.scale gives')
    guide = (ROOT / 'TRAINING.md').read_text('utf-8')
    section = guide[guide.index('## How long a bigger run takes'):]
    tutorial = report['rows'][-1]
    quoted = {f"{tutorial['celeba_epoch_tflop']:,.0f}",
              scale._duration(report['gpu_celeba_epoch_s']),
              scale._duration(tutorial['celeba_epoch_s']),
              f"{report['gpu_tflop_per_s_assumed']:g}",
              f"{report['celeba_training_faces']:,}"}
    for figure in quoted:
        assert figure in section, figure
