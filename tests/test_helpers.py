"""Tests for helpers.py: data preparation, run setup, pictures and checkpoints.

No network: the download is tested with a fake pooch downloader, and once
for real against an HTTP server on this machine (127.0.0.1).
"""

import argparse
import functools
import hashlib
import http.server
import os
import random
import sys
import threading
import types
import zipfile
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # before pyplot is imported anywhere: no display in tests

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import requests  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from PIL import Image  # noqa: E402
from torch import nn  # noqa: E402

import helpers  # noqa: E402
from facegen import fetch  # noqa: E402
from conftest import write_jpegs  # noqa: E402

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """Each test starts without FACEGEN_* variables and closes its figures."""
    monkeypatch.delenv('FACEGEN_DATA', raising=False)
    monkeypatch.delenv('FACEGEN_QUICK', raising=False)
    yield
    matplotlib.pyplot.close('all')


def make_zip(
    root, zip_path, top='processed_celeba_small', compression=zipfile.ZIP_STORED
):
    """Zip root's image subfolders as top/<sub>/<file>, like the course
    archive."""
    with zipfile.ZipFile(zip_path, 'w', compression) as zf:
        for file in sorted(Path(root).rglob('*')):
            if file.is_file():
                zf.write(file, f'{top}/{file.relative_to(root).as_posix()}')
    return zip_path


@pytest.fixture
def course_zip(face_folder, tmp_path):
    """A small archive laid out like the course one:
    processed_celeba_small/celeba/*.jpg."""
    (tmp_path / 'src').mkdir()
    return make_zip(face_folder, tmp_path / 'src' / 'faces.zip')


def leftovers(folder, keep=()):
    """Names in folder other than those in keep (temp folders, .part files,
    ...)."""
    return sorted(p.name for p in Path(folder).iterdir() if p.name not in keep)


def fail_if_called(*args, **kwargs):
    raise AssertionError('this should not have been called')


# ------------------------------------------------------------------------------
# quick_mode, count_images
# ------------------------------------------------------------------------------


@pytest.mark.parametrize('value', ['1', 'true', 'TRUE', 'Yes', ' yes '])
def test_quick_mode_on(monkeypatch, value):
    monkeypatch.setenv('FACEGEN_QUICK', value)
    assert helpers.quick_mode() is True


@pytest.mark.parametrize('value', ['0', '', None])
def test_quick_mode_off(monkeypatch, value):
    if value is not None:
        monkeypatch.setenv('FACEGEN_QUICK', value)
    assert helpers.quick_mode() is False


def test_quick_mode_rejects_unknown_value(monkeypatch):
    monkeypatch.setenv('FACEGEN_QUICK', 'ture')
    with pytest.raises(
        ValueError, match=r'FACEGEN_QUICK.*ture(.|\n)*1, true, yes'
    ):
        helpers.quick_mode()


class Stream:
    """A stand-in for sys.stdout or sys.stderr: a terminal or not."""

    def __init__(self, tty):
        self.tty = tty

    def isatty(self):
        return self.tty


@pytest.mark.parametrize('kernel, out_tty, err_tty, live', [
    (False, False, False, False),  # a log file, a pipe, CI
    (False, True, True, True),     # a terminal
    (False, False, True, False),   # python train.py > log: lines to the log
    (False, True, False, False),   # stderr sent elsewhere
    (True, False, False, True),    # Jupyter or Colab: no terminal, a kernel
])
def test_progress_bars_redraw_only_where_they_can(monkeypatch, kernel,
                                                  out_tty, err_tty, live):
    from facegen import settings
    shell = types.SimpleNamespace(kernel=object()) if kernel else None
    monkeypatch.setitem(sys.modules, 'IPython', types.SimpleNamespace(
        get_ipython=lambda: shell))  # a kernel's shell has a kernel
    monkeypatch.setattr(sys, 'stdout', Stream(out_tty))
    monkeypatch.setattr(sys, 'stderr', Stream(err_tty))
    assert settings.live_progress() is live


def test_no_decoding_bar_in_a_log(tmp_path, monkeypatch):
    """In a log, a bar's every redraw would stay: the decoding bar is off
    there (train.py prints plain lines instead)."""
    from facegen import faces
    shown = []

    def bar(*args, disable=False, **kwargs):
        shown.append(not disable)
        return faces_tqdm(*args, disable=disable, **kwargs)

    faces_tqdm = faces.tqdm
    monkeypatch.setattr(faces, 'tqdm', bar)
    write_jpegs(tmp_path / 'faces', 3)
    for live in (False, True):
        monkeypatch.setattr(faces, 'live_progress', lambda: live)
        faces.decode_all(tmp_path / 'faces', ['000000.jpg'], 8)
    assert shown == [False, True]


def test_count_images_is_recursive_and_ignores_other_files(tmp_path):
    write_jpegs(tmp_path / 'a', 3)
    write_jpegs(tmp_path / 'a' / 'deeper', 2)
    Image.new('RGB', (4, 4)).save(tmp_path / 'b.PNG')
    # counted by name, as ImageFolder would
    (tmp_path / 'c.jpeg').write_bytes(b'')
    (tmp_path / 'notes.txt').write_text('not an image')
    assert helpers.count_images(tmp_path) == 7
    assert helpers.count_images(tmp_path / 'missing') == 0


# ------------------------------------------------------------------------------
# prepare_data: folders
# ------------------------------------------------------------------------------


def test_prepare_data_uses_root_folder_in_place(face_folder, tmp_path, capsys):
    data_dir = tmp_path / 'unused'
    root = helpers.prepare_data(data_dir, source=face_folder)
    assert root == face_folder
    assert not data_dir.exists()  # used in place, not copied
    assert '40 images' in capsys.readouterr().out


def test_prepare_data_accepts_the_image_folder_itself(face_folder, tmp_path):
    # Images may sit at any depth: the folder named is the folder used.
    root = helpers.prepare_data(
        tmp_path / 'unused', source=face_folder / 'celeba'
    )
    assert Path(root).resolve() == (face_folder / 'celeba').resolve()
    assert len(helpers.load_faces(root, 8)) == 40


def test_prepare_data_reads_source_from_env(face_folder, tmp_path, monkeypatch):
    monkeypatch.setenv('FACEGEN_DATA', str(face_folder))
    monkeypatch.setattr(fetch, '_downloader', fail_if_called)
    assert helpers.prepare_data(tmp_path / 'unused') == face_folder


def test_data_dir_with_images_of_unknown_origin_is_not_called_the_course(
        face_folder, monkeypatch, capsys):
    """No source and a data folder that already holds images with no record
    of where they came from: they are used, and not called the course's."""
    monkeypatch.delenv('FACEGEN_DATA', raising=False)
    assert helpers.prepare_data(face_folder) == face_folder
    printed = capsys.readouterr().out
    assert 'already there' in printed and 'course' not in printed


def test_prepare_data_folder_without_images_is_refused(tmp_path):
    empty = tmp_path / 'empty'
    (empty / 'celeba').mkdir(parents=True)
    with pytest.raises(ValueError, match=f'No images found in {empty}'):
        helpers.prepare_data(tmp_path / 'data', source=empty)


def test_prepare_data_takes_a_flat_folder_beside_other_folders(tmp_path):
    # Reported bug: FACEGEN_DATA=~/Downloads/faces was refused because its
    # parent held other folders. Nothing needs ImageFolder's layout now.
    write_jpegs(tmp_path / 'faces', 20)
    (tmp_path / 'other').mkdir()
    write_jpegs(tmp_path / 'more_photos', 5, seed=1)
    root = helpers.prepare_data(tmp_path / 'data', source=tmp_path / 'faces')
    assert Path(root) == tmp_path / 'faces'
    assert len(helpers.load_faces(root, 8)) == 20  # only the folder named
    assert not (tmp_path / 'data').exists()


def test_prepare_data_takes_images_at_any_depth(tmp_path):
    write_jpegs(tmp_path / 'mine' / 'a', 3)
    write_jpegs(tmp_path / 'mine' / 'b' / 'c', 4, seed=1)
    (tmp_path / 'mine' / '.ipynb_checkpoints').mkdir()  # ignored, not refused
    root = helpers.prepare_data(tmp_path / 'data', source=tmp_path / 'mine')
    assert len(helpers.load_faces(root, 8)) == 7


def test_prepare_data_missing_source_names_path_and_variable(tmp_path):
    missing = tmp_path / 'nowhere.zip'
    with pytest.raises(
        FileNotFoundError, match=f'{missing}(.|\n)*FACEGEN_DATA'
    ):
        helpers.prepare_data(tmp_path / 'data', source=missing)


# ------------------------------------------------------------------------------
# prepare_data: zip archives
# ------------------------------------------------------------------------------


def test_prepare_data_extracts_zip_onto_data_dir(course_zip, tmp_path):
    # any name: the archive's top folder maps onto it
    data_dir = tmp_path / 'faces'
    root = helpers.prepare_data(data_dir, source=course_zip)
    assert root == data_dir
    visible = sorted(
        p.name for p in data_dir.iterdir() if not p.name.startswith('.')
    )
    assert visible == ['celeba']
    assert helpers.count_images(data_dir / 'celeba') == 40
    assert (
        leftovers(tmp_path, keep={'faces', 'src', 'processed_celeba_small'})
        == []
    )
    assert course_zip.exists()  # a user's own archive is never deleted


def test_prepare_data_default_data_dir(course_zip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path / 'src')
    root = helpers.prepare_data(source=course_zip)
    assert helpers.count_images(Path(root) / 'celeba') == 40
    assert (
        Path(root).resolve()
        == (tmp_path / 'src' / 'processed_celeba_small').resolve()
    )


def test_prepare_data_accepts_zip_of_the_image_folder(face_folder, tmp_path):
    archive = make_zip(
        face_folder / 'celeba', tmp_path / 'celeba.zip', top='celeba'
    )
    root = helpers.prepare_data(tmp_path / 'faces', source=archive)
    assert helpers.count_images(Path(root) / 'celeba') == 40


def test_prepare_data_second_call_does_nothing(
    course_zip, tmp_path, monkeypatch, capsys
):
    data_dir = tmp_path / 'faces'
    helpers.prepare_data(data_dir, source=course_zip)
    capsys.readouterr()
    monkeypatch.setattr(fetch, '_extract_archive', fail_if_called)
    monkeypatch.setattr(fetch, '_downloader', fail_if_called)
    assert helpers.prepare_data(data_dir, source=course_zip) == data_dir
    # no source: still no download
    assert helpers.prepare_data(data_dir) == data_dir
    out = capsys.readouterr().out
    assert f'40 images in {data_dir}' in out


def test_prepare_data_refuses_non_zip_file(tmp_path):
    bogus = tmp_path / 'faces.zip'
    bogus.write_text('this is not a zip file')
    with pytest.raises(ValueError, match=f'{bogus} is not a zip'):
        helpers.prepare_data(tmp_path / 'data', source=bogus)
    assert leftovers(tmp_path) == ['faces.zip']


@pytest.mark.parametrize(
    'bad_name',
    ['../evil.jpg', 'processed_celeba_small/../../evil.jpg', '/tmp/evil.jpg'],
)
def test_prepare_data_refuses_escaping_entries(face_folder, tmp_path, bad_name):
    archive = make_zip(face_folder, tmp_path / 'evil.zip')
    with zipfile.ZipFile(archive, 'a') as zf:
        zf.writestr(bad_name, b'gotcha')
    data_dir = tmp_path / 'out' / 'faces'
    with pytest.raises(ValueError, match='Refusing'):
        helpers.prepare_data(data_dir, source=archive)
    assert not (tmp_path / 'out').exists() or leftovers(tmp_path / 'out') == []
    assert not (tmp_path / 'evil.jpg').exists()


def test_prepare_data_truncated_zip_leaves_nothing(course_zip, tmp_path):
    data = course_zip.read_bytes()
    course_zip.write_bytes(data[: len(data) // 2])
    data_dir = tmp_path / 'out' / 'faces'
    with pytest.raises(ValueError, match='faces.zip'):
        helpers.prepare_data(data_dir, source=course_zip)
    assert not data_dir.exists()
    assert not (tmp_path / 'out').exists() or leftovers(tmp_path / 'out') == []


def test_prepare_data_damaged_member_rolls_back(face_folder, tmp_path):
    # Corrupt the bytes of the 21st image: its CRC check fails half-way
    # through extraction.
    archive = make_zip(face_folder, tmp_path / 'faces.zip')
    data = bytearray(archive.read_bytes())
    start = data.find((face_folder / 'celeba' / '000020.jpg').read_bytes())
    assert start > 0
    data[start + 100] ^= 0xFF
    archive.write_bytes(bytes(data))
    (tmp_path / 'out').mkdir()
    data_dir = tmp_path / 'out' / 'faces'
    with pytest.raises(ValueError, match='damaged'):
        helpers.prepare_data(data_dir, source=archive)
    # neither data_dir nor the temp folder
    assert leftovers(tmp_path / 'out') == []


def test_prepare_data_refuses_to_overwrite_unrelated_folder(
    course_zip, tmp_path
):
    data_dir = tmp_path / 'faces'
    data_dir.mkdir()
    (data_dir / 'notes.txt').write_text('mine')
    with pytest.raises(FileExistsError, match=str(data_dir)):
        helpers.prepare_data(data_dir, source=course_zip)
    assert (data_dir / 'notes.txt').read_text() == 'mine'


def test_prepare_data_fills_an_empty_data_dir(course_zip, tmp_path):
    data_dir = tmp_path / 'faces'
    data_dir.mkdir()
    helpers.prepare_data(data_dir, source=course_zip)
    assert helpers.count_images(data_dir / 'celeba') == 40


# ------------------------------------------------------------------------------
# prepare_data: download (helpers._fetch replaced; no network)
# ------------------------------------------------------------------------------


@pytest.fixture
def fake_download(course_zip, monkeypatch):
    """Serve course_zip's bytes as 'the' archive through a fake pooch
    downloader; replies[i] overrides the i-th download (bytes, or an
    exception raised after a partial file was written)."""
    good = course_zip.read_bytes()
    monkeypatch.setattr(fetch, 'DATA_SHA256', hashlib.sha256(good).hexdigest())
    # the retry wait
    monkeypatch.setattr(pooch_core(), 'sleep', lambda seconds: None)
    calls = []

    def install(*replies):
        def download(url, output_file, pooch_instance):
            calls.append(Path(output_file))
            assert url == fetch.DATA_URL
            reply = (
                replies[len(calls) - 1] if len(calls) <= len(replies) else good
            )
            if isinstance(reply, BaseException):
                Path(output_file).write_bytes(good[:1000])  # partial, then fail
                raise reply
            Path(output_file).write_bytes(reply)

        monkeypatch.setattr(fetch, '_downloader', lambda: download)
        return calls

    install.good = good
    return install


def pooch_core():
    import pooch.core

    return pooch.core.time


def test_download_succeeds_and_removes_archive(fake_download, tmp_path):
    calls = fake_download()
    (tmp_path / 'dl').mkdir()
    data_dir = tmp_path / 'dl' / 'faces'
    assert helpers.prepare_data(data_dir) == data_dir
    assert len(calls) == 1
    # the partial file sits beside data_dir
    assert calls[0].parent == data_dir.parent
    assert helpers.count_images(data_dir / 'celeba') == 40
    assert leftovers(tmp_path / 'dl') == ['faces']


def test_download_retries_once_after_truncation(fake_download, tmp_path):
    calls = fake_download(fake_download.good[:5000])
    data_dir = tmp_path / 'dl' / 'faces'
    helpers.prepare_data(data_dir)
    assert len(calls) == 2
    assert helpers.count_images(data_dir / 'celeba') == 40
    assert leftovers(tmp_path / 'dl') == ['faces']


def test_download_retries_once_after_connection_error(fake_download, tmp_path):
    calls = fake_download(requests.ConnectionError('peer reset'))
    data_dir = tmp_path / 'dl' / 'faces'
    helpers.prepare_data(data_dir)
    assert len(calls) == 2
    assert helpers.count_images(data_dir / 'celeba') == 40


def test_download_failing_twice_explains_manual_route(fake_download, tmp_path):
    bad = fake_download.good[:-10]
    calls = fake_download(bad, bad, bad)
    (tmp_path / 'dl').mkdir()
    with pytest.raises(RuntimeError, match='FACEGEN_DATA'):
        helpers.prepare_data(tmp_path / 'dl' / 'faces')
    assert len(calls) == 2  # one retry, not more
    assert leftovers(tmp_path / 'dl') == []


def test_download_interrupted_by_user_leaves_nothing(fake_download, tmp_path):
    fake_download(KeyboardInterrupt())
    (tmp_path / 'dl').mkdir()
    with pytest.raises(KeyboardInterrupt):
        helpers.prepare_data(tmp_path / 'dl' / 'faces')
    assert leftovers(tmp_path / 'dl') == []


@pytest.fixture
def http_server(course_zip):
    """The test archive served over HTTP on 127.0.0.1 (a real download
    through pooch's HTTP downloader, without leaving this machine)."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(course_zip.parent)
    )
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{server.server_port}'
    server.shutdown()
    server.server_close()


def test_real_download_over_http_checks_the_hash(
    http_server, course_zip, tmp_path, monkeypatch
):
    monkeypatch.setattr(fetch, 'DATA_URL', f'{http_server}/{course_zip.name}')
    monkeypatch.setattr(
        fetch,
        'DATA_SHA256',
        hashlib.sha256(course_zip.read_bytes()).hexdigest(),
    )
    data_dir = tmp_path / 'dl' / 'faces'
    assert helpers.prepare_data(data_dir) == data_dir
    assert helpers.count_images(data_dir) == 40
    assert leftovers(tmp_path / 'dl') == ['faces']


def test_real_download_of_a_changed_file_is_refused(
    http_server, course_zip, tmp_path, monkeypatch
):
    monkeypatch.setattr(fetch, 'DATA_URL', f'{http_server}/{course_zip.name}')
    monkeypatch.setattr(fetch, 'DATA_SHA256', '0' * 64)
    monkeypatch.setattr(pooch_core(), 'sleep', lambda seconds: None)
    (tmp_path / 'dl').mkdir()
    with pytest.raises(RuntimeError, match='failed twice'):
        helpers.prepare_data(tmp_path / 'dl' / 'faces')
    assert leftovers(tmp_path / 'dl') == []


# ------------------------------------------------------------------------------
# Run setup
# ------------------------------------------------------------------------------


def draw_random():
    return random.random(), np.random.rand(), torch.rand(3).tolist()


def test_seed_everything_repeats_all_generators(capsys):
    helpers.seed_everything(123)
    first = draw_random()
    helpers.seed_everything(123)
    assert draw_random() == first
    helpers.seed_everything(124)
    other = draw_random()
    # each generator was reseeded
    assert all(a != b for a, b in zip(other, first))
    assert capsys.readouterr().out.count('123') == 2


def test_choose_device_cpu(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: False)
    assert helpers.choose_device() == torch.device('cpu')
    assert 'cpu' in capsys.readouterr().out


def test_choose_device_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(
        torch.cuda, 'get_device_name', lambda device=None: 'Fake GPU 9000'
    )
    assert helpers.choose_device().type == 'cuda'
    assert 'Fake GPU 9000' in capsys.readouterr().out


def test_count_parameters_counts_trainable_only():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))  # 8 + 3 parameters
    assert helpers.count_parameters(model) == 11
    model[0].weight.requires_grad_(False)
    assert helpers.count_parameters(model) == 5


# ------------------------------------------------------------------------------
# Pictures
# ------------------------------------------------------------------------------


def assert_png(path):
    assert Path(path).read_bytes()[:8] == PNG_SIGNATURE


def test_show_images_maps_value_range(tmp_path):
    # 0 is mid-grey in [-1, 1]
    images = torch.zeros(4, 3, 8, 8, dtype=torch.float16)
    path = tmp_path / 'deep' / 'grid.png'
    fig = helpers.show_images(
        images, nrow=2, value_range=(-1, 1), title='t', path=path
    )
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_title() == 't' and not ax.axison
    pixels = np.asarray(ax.images[0].get_array())
    assert pixels.shape == (2 + 2 * 10, 2 + 2 * 10, 3)  # 2 x 2 grid, padding 2
    assert np.allclose(pixels[2:10, 2:10], 0.5, atol=1e-3)
    assert_png(path)


def test_show_images_default_range_is_unit(tmp_path):
    fig = helpers.show_images(torch.full((1, 3, 4, 4), 0.25))
    assert np.allclose(
        np.asarray(fig.axes[0].images[0].get_array())[2:6, 2:6], 0.25
    )


def test_show_images_rejects_single_image():
    with pytest.raises(ValueError, match='unsqueeze'):
        helpers.show_images(torch.zeros(3, 8, 8))


def test_plot_losses_draws_raw_and_smoothed(tmp_path):
    losses = {
        'D': list(np.linspace(1.4, 0.6, 200)),
        'G': list(np.linspace(0.7, 2.0, 200)),
    }
    path = tmp_path / 'losses.png'
    fig = helpers.plot_losses(losses, path=path)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert ax.get_xlabel() == 'batch' and ax.get_ylabel() == 'loss'
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        'discriminator',
        'generator',
    ]
    lengths = sorted(len(line.get_xdata()) for line in ax.get_lines())
    assert lengths == [197, 197, 200, 200]  # window 200 // 50 = 4
    assert_png(path)


def test_plot_losses_short_and_missing():
    fig = helpers.plot_losses({'D': [1.0], 'G': []})
    assert len(fig.axes[0].get_lines()) == 2
    with pytest.raises(KeyError, match='G'):
        helpers.plot_losses({'D': [1.0]})


def test_save_image_grid_writes_png(tmp_path):
    path = tmp_path / 'samples' / 'epoch_003.png'
    images = torch.ones(16, 3, 8, 8, requires_grad=True)  # white in [-1, 1]
    assert Path(helpers.save_image_grid(images, path)) == path
    with Image.open(path) as picture:
        assert picture.size == (8 * 10 + 2, 2 * 10 + 2)
        assert picture.getpixel((5, 5)) == (255, 255, 255)
    helpers.save_image_grid(
        -torch.ones(2, 3, 8, 8), path, nrow=2, value_range=(-1, 1)
    )
    with Image.open(path) as picture:
        assert picture.size == (2 * 10 + 2, 10 + 2)
        assert picture.getpixel((5, 5)) == (0, 0, 0)


def test_samples_over_epochs_picks_even_rows(tmp_path):
    samples = [torch.rand(16, 3, 8, 8) * 2 - 1 for _ in range(10)]
    path = tmp_path / 'progress.png'
    fig = helpers.samples_over_epochs(samples, path=path, max_rows=4)
    assert isinstance(fig, Figure)
    assert [ax.get_ylabel() for ax in fig.axes] == [
        'epoch 1',
        'epoch 4',
        'epoch 7',
        'epoch 10',
    ]
    width = np.asarray(fig.axes[0].images[0].get_array()).shape[1]
    assert width == 8 * 10 + 2  # first 8 images of each epoch
    assert_png(path)


def test_samples_over_epochs_all_rows_when_few():
    fig = helpers.samples_over_epochs([torch.zeros(3, 3, 8, 8)] * 3)
    assert [ax.get_ylabel() for ax in fig.axes] == [
        'epoch 1',
        'epoch 2',
        'epoch 3',
    ]
    with pytest.raises(ValueError, match='empty'):
        helpers.samples_over_epochs([])


# ------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------


def example_state():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.Adam(
        model.parameters(), lr=2e-4, betas=(0.5, 0.999)
    )
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()
    return {
        'config': {
            'lr': 2e-4,
            'betas': (0.5, 0.999),
            'name': 'run',
            'flags': [True, None],
        },
        'epoch': 3,
        'G': model.state_dict(),
        'opt_G': optimizer.state_dict(),
        'losses': {'D': [1.0, 0.5], 'G': [0.7, 0.9]},
        'fixed_z': torch.randn(5, 10),
        'rng': {'torch': torch.get_rng_state(), 'numpy_seed': 7},
    }


def test_checkpoint_round_trip(tmp_path):
    state = example_state()
    path = tmp_path / 'runs' / 'ckpt.pt'
    helpers.save_checkpoint(path, state)
    loaded = helpers.load_checkpoint(path)
    assert loaded['config'] == state['config'] and loaded['epoch'] == 3
    assert loaded['losses'] == state['losses']
    assert torch.equal(loaded['G']['weight'], state['G']['weight'])
    assert torch.equal(loaded['fixed_z'], state['fixed_z'])
    assert torch.equal(loaded['rng']['torch'], state['rng']['torch'])
    assert loaded['opt_G']['param_groups'][0]['betas'] == (0.5, 0.999)
    assert os.listdir(path.parent) == ['ckpt.pt']  # no temporary file left


def test_checkpoint_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / 'ckpt.pt'
    helpers.save_checkpoint(path, {'epoch': 1})

    def broken_save(obj, f, *args, **kwargs):
        f.write(b'half a checkpoint')
        raise OSError('disk full')

    monkeypatch.setattr(torch, 'save', broken_save)
    with pytest.raises(OSError, match='disk full'):
        helpers.save_checkpoint(path, {'epoch': 2})
    monkeypatch.undo()
    # the old one is intact
    assert helpers.load_checkpoint(path) == {'epoch': 1}
    assert os.listdir(tmp_path) == ['ckpt.pt']


@pytest.mark.skipif(os.name != 'posix', reason='POSIX permission bits')
def test_written_files_get_the_usual_permissions(tmp_path):
    """A checkpoint or run.json is readable like any file the user makes
    (mkstemp alone would leave it readable by its owner only)."""
    umask = os.umask(0o022)
    os.umask(umask)
    path = helpers.save_checkpoint(tmp_path / 'ckpt.pt', {'epoch': 1})
    plain = tmp_path / 'plain'
    plain.write_bytes(b'')
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_load_checkpoint_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match='nope.pt'):
        helpers.load_checkpoint(tmp_path / 'nope.pt')


@pytest.mark.parametrize('damage', ['garbage', 'truncated'])
def test_load_checkpoint_damaged_file(tmp_path, damage):
    path = tmp_path / 'ckpt.pt'
    helpers.save_checkpoint(path, example_state())
    data = path.read_bytes()
    path.write_bytes(
        b'\x00garbage' * 50 if damage == 'garbage' else data[: len(data) // 2]
    )
    with pytest.raises(RuntimeError, match=f'{path}(.|\n)*Delete it'):
        helpers.load_checkpoint(path)


def test_load_checkpoint_explains_pickled_objects(tmp_path):
    path = tmp_path / 'ckpt.pt'
    torch.save({'config': argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(
        helpers.CheckpointError, match=r'plain values(.|\n)*vars\(args\)'
    ):
        helpers.load_checkpoint(path)


def test_long_runs_animate_evenly_spaced_epochs_first_to_last(tmp_path):
    """30 epochs, at most 12 frames: epochs 1 to 30 evenly spaced, so the
    animation still starts from the first faces and ends on the final
    ones."""
    samples = [torch.full((4, 3, 8, 8), -1.0 + 2 * epoch / 29)
               for epoch in range(30)]  # black at epoch 1 ... white at 30
    path = helpers.save_samples_gif(samples, tmp_path / 'a.gif', nrow=4,
                                    max_frames=12)
    with Image.open(path) as gif:
        assert gif.n_frames == 12
        medians = []
        for index in (0, 11):
            gif.seek(index)
            faces = np.asarray(gif.convert('L'))[40:]  # below the label
            medians.append(np.median(faces))
    assert medians[0] < 20 and medians[1] > 235


def test_samples_gif_has_one_labelled_frame_per_epoch(tmp_path):
    samples = [torch.full((4, 3, 8, 8), -1.0 + epoch) for epoch in range(3)]
    path = helpers.save_samples_gif(samples, tmp_path / 'a.gif', nrow=4)
    with Image.open(path) as gif:
        assert gif.n_frames == 3
        durations = []
        for index in range(3):
            gif.seek(index)
            durations.append(gif.info['duration'])
            frame = np.asarray(gif.convert('RGB'))
            label = frame[:24]  # the strip above the faces holds dark text
            assert (label < 100).any() and (label > 200).any()
        assert durations[-1] > durations[0]  # the final faces stay longer
