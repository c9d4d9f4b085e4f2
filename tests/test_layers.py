"""experiments/layers.py: every layer's time and FLOPs in a training step,
counted right, and the committed table in experiments/README.md."""
import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from experiments import layers

ROOT = Path(__file__).resolve().parents[1]
SAVED = ROOT / 'assets' / 'layers.json'  # AVX2, fp32
SAVED_AMX = ROOT / 'assets' / 'layers_amx.json'  # AMX, bf16

pytestmark = pytest.mark.usefixtures('one_thread')


def tiny_step():
    args = layers.parse_args(['--quick', '--conv-dim', '8'])
    return layers.make_step(args, torch.device('cpu'), None)


def test_flops_counted_per_layer_add_up_to_torchs_count():
    """Backward FLOPs depend on which gradients each call needs (D's
    weights: not while G learns; real images: no input gradient); the
    layers' sum must match what torch's own counter sees in the step."""
    step, networks = tiny_step()
    step()  # optimizer state exists, as in every later step
    clock = layers.LayerClock(networks, torch.device('cpu'))
    clock.attach()
    with FlopCounterMode(display=False) as counter:
        step()
    clock.detach()
    counted = sum(clock.flops.values())
    assert counted == counter.get_total_flops() > 0
    # D's first convolution runs three times (real, fake, fake for G);
    # its backward: the weights' gradient twice, while D learns, and the
    # input's once, for G. G's last layer: once, both gradients.
    flops = clock.flops
    assert flops['D.features.0.0', 'backward'] == flops[
        'D.features.0.0', 'forward']
    assert flops['G.upsample.4', 'backward'] == 2 * flops[
        'G.upsample.4', 'forward']


def test_every_leaf_layer_is_timed_and_times_fit_in_the_step(capsys):
    report = layers.run(layers.parse_args(['--quick', '--conv-dim', '8']))
    step, networks = tiny_step()
    leaves = {f'{prefix}.{name}' for prefix, net in networks.items()
              for name, module in net.named_modules()
              if not list(module.children())}
    assert {row['layer'] for row in report['layers']} == leaves
    for row in report['layers']:
        assert row['forward_ms'] > 0 and row['backward_ms'] > 0, row
    ms, gflop = layers.summary(report)
    assert ms['outside the layers'] > 0  # no time counted twice
    assert gflop > 0 and report['matmul_gflop_per_s'] > 0
    kinds = {row['layer']: row['kind'] for row in report['layers']}
    assert kinds['D.features.0.0'] == 'Conv2d 3→8, 32→16 px'
    # the generator's output layer, in float32 under autocast
    assert kinds['G.upsample.4'] == 'Float32ConvTranspose2d 8→3, 16→32 px'
    assert kinds['D.classify'] == 'Linear 512→1'


def test_a_layer_that_computes_nothing_extra_has_no_flops():
    relu = nn.ReLU()
    x = torch.randn(2, 3, 4, 4)
    assert layers.forward_flops(relu, (x,), relu(x)) == 0
    conv = nn.ConvTranspose2d(4, 2, 4, 2, 1)
    x = torch.randn(5, 4, 3, 3)
    with FlopCounterMode(display=False) as counter:
        y = conv(x)
    assert layers.forward_flops(conv, (x,), y) == counter.get_total_flops()


def test_quick_run_writes_its_figures(tmp_path, capsys):
    out = tmp_path / 'layers.json'
    layers.main(['--quick', '--json', str(out)])
    report = json.loads(out.read_text())
    assert report['steps'] == 4 and report['batch_size'] == 16
    assert layers.format_table(report) in capsys.readouterr().out


def work(group):
    """GFLOP of a group of layers' rows, forward and backward."""
    return sum(row['forward_gflop'] + row['backward_gflop'] for row in group)


def share_of_peak(row, report):
    """A layer's GFLOP/s over its forward and backward, against the peak."""
    return (work([row]) / (row['forward_ms'] + row['backward_ms']) * 1e3
            / report['matmul_gflop_per_s'])


def colour_and_wide(report):
    """The rows of the two layers that touch the 3 colour channels, and of
    the other convolutions."""
    rows = {row['layer']: row for row in report['layers']}
    colour = [rows['D.features.0.0'], rows['G.upsample.4']]
    wide = [row for row in report['layers']
            if 'Conv' in row['kind'] and row not in colour]
    return colour, wide


def test_experiments_readme_shows_the_committed_profile():
    report = json.loads(SAVED.read_text('utf-8'))
    assert report['batch_size'] == 128 and report['steps'] >= 48
    readme = (ROOT / 'experiments' / 'README.md').read_text('utf-8')
    assert layers.format_table(report) in readme
    # the figures its text quotes, read off the JSON
    ms, gflop = layers.summary(report)
    colour, wide = colour_and_wide(report)
    shares = [share_of_peak(row, report) for row in wide]
    colour_ms = sum(row['forward_ms'] + row['backward_ms'] for row in colour)
    hooked = report['hooked_step_ms']
    last = colour[1]
    last_forward = layers.gflop_per_s(last['forward_gflop'],
                                      last['forward_ms'])
    quoted = [
        f'about {work(wide) / gflop:.0%} of\n  the work',
        f'{100 * min(shares):.0f}–{100 * max(shares):.0f}% of the matmul '
        f'peak',
        f'forward at {last_forward:.0f} GFLOP/s',
        f'{colour_ms:.1f} ms of the step for {work(colour) / gflop:.0%}',
        f"tanh take {ms['other layers'] / hooked:.0%}",
        f"outside the layers\n  {ms['outside the layers'] / hooked:.0%}",
    ]
    for text in quoted:
        assert text in readme, text


def test_experiments_readme_shows_the_amx_profile():
    """The bf16 profile on the CPU with AMX, and the shares its text gives."""
    report = json.loads(SAVED_AMX.read_text('utf-8'))
    assert report['batch_size'] == 128 and report['steps'] >= 48
    assert report['precision'] == 'torch.bfloat16'
    readme = (ROOT / 'experiments' / 'README.md').read_text('utf-8')
    assert layers.format_table(report) in readme
    colour, wide = colour_and_wide(report)
    shares = [share_of_peak(row, report) for row in wide]
    colours = [share_of_peak(row, report) for row in colour]
    prose = ' '.join(readme.split())  # line breaks as spaces
    for text in (f'{100 * min(shares):.0f}–{100 * max(shares):.0f}% of the '
                 f'bfloat16 matmul peak',
                 f'{100 * min(colours):.0f}–{100 * max(colours):.0f}%'):
        assert text in prose, text
