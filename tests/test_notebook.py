"""The committed notebook is set up so that nbval really checks every
exercise."""

import os
import re
from pathlib import Path

import pytest

import dcgan
import helpers
from conftest import notebook_cells
from facegen.faces import held_out_fingerprint
from facegen.settings import DATA_ENV, DEFAULT_DATA_DIR

ROOT = Path(__file__).resolve().parents[1]


def stdout_of(cell):
    return ''.join(
        ''.join(out['text'])
        for out in cell.get('outputs', [])
        if out['output_type'] == 'stream' and out['name'] == 'stdout'
    )


def test_every_check_cell_is_compared_against_tests_passed():
    """nbval --nbval-lax compares only marked cells, and only against saved
    output."""
    checks = [
        cell
        for cell in notebook_cells('code')
        if 'tests.test_' in ''.join(cell['source'])
    ]
    assert len(checks) >= 8
    for cell in checks:
        source = ''.join(cell['source'])
        calls = len(re.findall(r'^tests\.test_\w+\(', source, flags=re.M))
        assert source.startswith('# NBVAL_CHECK_OUTPUT\n'), source
        assert stdout_of(cell) == 'Tests Passed\n' * calls, source


def test_every_problem_unittest_is_called_in_the_notebook():
    import problem_unittests

    called = set(
        re.findall(
            r'tests\.(test_\w+)\(',
            ''.join(''.join(c['source']) for c in notebook_cells('code')),
        )
    )
    defined = {
        name for name in dir(problem_unittests) if name.startswith('test_')
    }
    assert called == defined


def test_committed_notebook_shows_a_full_run():
    """Readers of the notebook and its HTML see a real run, not quick mode or
    an error."""
    cells = notebook_cells('code')
    counts = [cell.get('execution_count') for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), (
        'the notebook was not run top to bottom in one go: '
        'run it all before committing it'
    )
    errors = [
        out
        for cell in cells
        for out in cell.get('outputs', [])
        if out['output_type'] == 'error'
    ]
    assert not errors
    printed = ''.join(stdout_of(cell) for cell in cells)
    assert 'Quick mode' not in printed
    assert re.search(r'^epoch (\d+)/\1: ', printed, flags=re.M), (
        'training did not finish'
    )


def test_published_generator_matches_the_committed_run():
    """assets/generator.pt is the committed run's generator, with the score
    it printed."""
    G, info = helpers.load_generator(
        ROOT / 'assets' / 'generator.pt', dcgan.Generator
    )
    printed = '\n'.join(stdout_of(cell) for cell in notebook_cells('code'))
    assert f"SWD {info['score']['swd']:.2f} for" in printed
    assert f"floor {info['score']['floor']:.2f}" in printed
    assert info['score']['n'] == helpers.HELD_OUT_SIZE
    faces = helpers.sample_faces(G, info['config']['z_size'], 4)
    size = info['config']['image_size']
    assert faces.shape == (4, 3, size, size)
    assert faces.float().std() > 20, (
        'the published generator should draw faces, not a flat image'
    )
    assert (ROOT / 'assets' / 'generator.pt').stat().st_size < 5 * 2**20


def test_result_pictures_are_committed():
    for name in (
        'real_faces.png',
        'losses.png',
        'samples_over_epochs.png',
        'samples.gif',
        'generated_faces.png',
        'scores.png',
        'nearest_pairs.png',
        'interpolation.png',
    ):
        assert (ROOT / 'assets' / name).stat().st_size > 1000, name


def test_published_generator_knows_the_faces_held_out_from_it():
    """evaluate.py warns when a generator is scored against other held-out
    faces than its training left out; assets/generator.pt must carry the
    fingerprint of the course folder's, the folder the notebook trains on."""
    if not (os.environ.get(DATA_ENV) or Path(DEFAULT_DATA_DIR).is_dir()):
        pytest.skip(f'no course data here and no {DATA_ENV}: nothing to '
                    f'compare with')
    _, info = helpers.load_generator(ROOT / 'assets' / 'generator.pt',
                                     dcgan.Generator)
    assert info['held_out'] == held_out_fingerprint(helpers.prepare_data())
