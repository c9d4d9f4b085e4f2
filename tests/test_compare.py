"""experiments/compare.py --quick trains each chosen variant for the same
CPU time and scores it."""
import json

import pytest
import torch

import dcgan
from conftest import write_jpegs
from experiments import compare
from facegen.run import load_generator
from facegen.runtime import can_keep_freed_memory, precision_label
from facegen.settings import COURSE


def test_quick_comparison_scores_every_variant(tmp_path, capsys):
    data_dir = tmp_path / 'faces'
    write_jpegs(data_dir / 'celeba', 300)
    out, runs = tmp_path / 'compare.json', tmp_path / 'runs'
    compare.main(['--quick', '--data-dir', str(data_dir), '--json', str(out),
                  '--out-dir', str(runs),
                  '--variants', 'course', 'ema_recal', 'decay_recal'])
    report = json.loads(out.read_text())
    assert [row['variant'] for row in report['rows']] == [
        'course', 'ema_recal', 'decay_recal']
    assert report['n'] == 30  # every held-out face of 300
    assert report['floor_swd'] > 0
    assert report['freed_memory_kept'] == can_keep_freed_memory()
    # named as every other script's JSON names them ('auto' may be either)
    course, *fast = [row['precision'] for row in report['rows']]
    assert course == 'fp32'
    assert fast[0] == fast[1] in {precision_label(None),
                                  precision_label(torch.bfloat16)}
    for row in report['rows']:
        assert row['steps'] >= 1 and row['swd'] > report['floor_swd'], row
        assert row['memorisation'] > 0, row  # untrained: far from any face
        G, info = load_generator(runs / f"{row['variant']}.pt",
                                 dcgan.Generator)
        assert info['score']['swd'] == row['swd']
    logged = [json.loads(line)
              for line in (runs / 'results.jsonl').read_text().splitlines()]
    assert logged == report['rows']
    table = capsys.readouterr().out
    assert '| the course recipe, fp32 |' in table


def test_spectral_norm_variant_has_no_batch_norm_and_unit_norm_weights():
    D = compare.with_spectral_norm(dcgan.Discriminator(8, 16))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    D(torch.randn(4, 3, 16, 16))  # one power iteration in training mode
    conv = D.features[1][0]
    sigma = torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2)
    assert sigma.item() == pytest.approx(1.0, rel=0.3)


def test_every_variant_starts_from_the_course_recipe():
    assert compare.VARIANTS['course'][1] == {}
    for name, (what, changes) in compare.VARIANTS.items():
        assert set(changes) <= set(compare.BASELINE), name
    # the baseline is facegen.settings.COURSE, its lr given to D and G
    recipe = {key: value for key, value in COURSE.items() if key != 'lr'}
    assert {key: compare.BASELINE[key] for key in recipe} == recipe
    assert compare.BASELINE['lr_d'] == compare.BASELINE['lr_g'] == COURSE['lr']
