"""metrics.cached_metric and score.real_floor's cache: a stored result is
reused only for the very same images, metric and metric code; a damaged file
is computed again."""

import json

import pytest

import helpers
from facegen import faces, metrics, score
from facegen.metrics import metric_utils
from test_metrics import smooth_images


@pytest.fixture
def counted(monkeypatch):
    """Replace the 'swd' metric by a cheap one that counts its calls."""
    calls = []

    def mean_difference(a, b):
        calls.append(len(a))
        return (a.float().mean() - b.float().mean()).abs().item() + 1.0

    monkeypatch.setitem(metrics.METRICS, 'swd', mean_difference)
    return calls


def cache_files(folder):
    return sorted(folder.glob('*.json'))


def test_a_stored_result_is_reused(counted, tmp_path):
    a, b = smooth_images(20, seed=1), smooth_images(20, seed=2)
    first = metrics.cached_metric('swd', a, b, cache_dir=tmp_path)
    again = metrics.cached_metric('swd', a, b, cache_dir=tmp_path)
    assert counted == [20]  # computed once
    assert again['value'] == first['value'] and again['cached'] is True
    assert 'cached' not in first
    assert len(cache_files(tmp_path)) == 1
    assert not list(tmp_path.glob('*.tmp'))  # the temporary file was renamed


def test_other_images_are_computed_afresh(counted, tmp_path):
    a, b = smooth_images(20, seed=1), smooth_images(20, seed=2)
    metrics.cached_metric('swd', a, b, cache_dir=tmp_path)
    changed = b.clone()
    changed[0, 0, 0, 0] ^= 1  # one bit of one pixel
    metrics.cached_metric('swd', a, changed, cache_dir=tmp_path)
    metrics.cached_metric('swd', a, b[:19], cache_dir=tmp_path)
    assert counted == [20, 20, 20]
    assert len(cache_files(tmp_path)) == 3


def test_changed_metric_code_is_computed_afresh(counted, tmp_path, monkeypatch):
    a, b = smooth_images(20, seed=1), smooth_images(20, seed=2)
    metrics.cached_metric('swd', a, b, cache_dir=tmp_path)
    source = metric_utils._metric_source('swd')
    monkeypatch.setattr(
        metric_utils, '_metric_source', lambda name: source + b'# edited'
    )
    metrics.cached_metric('swd', a, b, cache_dir=tmp_path)
    assert counted == [20, 20]


def test_settings_are_part_of_the_key():
    a, b = smooth_images(4, seed=1), smooth_images(4, seed=2)
    assert (
        metrics.fingerprint('swd', a, b)
        != metrics.fingerprint('swd_fast', a, b)
    )
    assert metrics.fingerprint('swd', a, b) != metrics.fingerprint('swd', b, a)
    assert (
        metrics.fingerprint('swd', a, b)
        == metrics.fingerprint('swd', a.clone(), b)
    )


@pytest.mark.parametrize(
    'damage',
    [
        # cut short
        lambda text: text[: len(text) // 2],
        # empty
        lambda text: '',
        # another computation's
        lambda text: json.dumps({**json.loads(text), 'key': '0' * 64}),
        # not a number
        lambda text: json.dumps({**json.loads(text), 'value': 'NaN?'}),
    ],
)
def test_a_damaged_cache_file_is_computed_again(counted, tmp_path, damage):
    a, b = smooth_images(20, seed=1), smooth_images(20, seed=2)
    first = metrics.cached_metric('swd', a, b, cache_dir=tmp_path)
    (path,) = cache_files(tmp_path)
    path.write_text(damage(path.read_text()))
    again = metrics.cached_metric('swd', a, b, cache_dir=tmp_path)
    assert counted == [20, 20] and 'cached' not in again
    assert again['value'] == first['value']
    # mended
    assert metrics.cached_metric('swd', a, b, cache_dir=tmp_path)['cached']


def test_no_cache_dir_stores_nothing(counted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b = smooth_images(20, seed=1), smooth_images(20, seed=2)
    metrics.cached_metric('swd', a, b)
    metrics.cached_metric('swd', a, b)
    assert counted == [20, 20] and not list(tmp_path.rglob('*'))


def test_real_floor_is_the_same_from_the_cache(tmp_path):
    held_out, train = smooth_images(60, seed=1), smooth_images(120, seed=2)
    plain = score.real_floor(held_out, train, 60, metric='swd_fast')
    stored = score.real_floor(
        held_out, train, 60, metric='swd_fast', cache_dir=tmp_path
    )
    reused = score.real_floor(
        held_out, train, 60, metric='swd_fast', cache_dir=tmp_path
    )
    assert plain == stored == reused
    assert len(cache_files(tmp_path)) == score.REPEATS  # one file per subset


def test_metrics_cache_sits_beside_the_data(face_folder):
    folder = helpers.metrics_cache_dir(face_folder)
    assert folder == face_folder.parent / faces.CACHE_DIR_NAME / 'metrics'
    assert helpers.metrics_cache_dir(str(face_folder)) == folder


def test_an_unwritable_cache_warns_and_still_answers(counted, tmp_path):
    blocker = tmp_path / 'not-a-folder'
    blocker.write_text('a file where the cache folder should be')
    a, b = smooth_images(20, seed=1), smooth_images(20, seed=2)
    with pytest.warns(UserWarning, match='computed again next time'):
        record = metrics.cached_metric(
            'swd', a, b, cache_dir=blocker / 'metrics'
        )
    assert record['value'] == metrics.cached_metric('swd', a, b)['value']
