"""Tests for helpers.load_faces, the decoded-image cache: same pixels as the
course path, a cache that is reused, rebuilt when anything changes and never
trusted when damaged.

Small made-up folders only (never the real data); each test decodes a few
dozen images.
"""

import os
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms

import helpers
from facegen import faces
from conftest import write_jpegs


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch):
    """Several chunks even for 40 images, so the thread pool's bookkeeping
    is exercised."""
    monkeypatch.setattr(faces, '_DECODE_CHUNK', 7)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / 'cache'


@pytest.fixture
def decode_calls(monkeypatch):
    """A list that gets one entry per real decode of a folder (i.e. per
    cache miss)."""
    calls = []
    real = faces.decode_all

    def counting(data_dir, files, size, workers=None):
        calls.append(len(files))
        return real(data_dir, files, size, workers)

    monkeypatch.setattr(faces, 'decode_all', counting)
    return calls


@contextmanager
def one_warning(match):
    """Expect exactly one warning during the block, and that it matches
    `match`."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        yield caught
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, f'expected one warning, got {messages}'
    assert match in messages[0], messages[0]


@contextmanager
def no_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        yield


def course_pixels(path, size):
    """What the course's get_dataloader gives for one file: floats in [0, 1]."""
    course = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
        ]
    )
    with Image.open(path) as img:
        return course(img.convert('RGB'))


def assert_course_equal(images, paths, size, tolerance=1 / 255):
    assert images.dtype == torch.uint8 and images.is_contiguous()
    assert images.shape == (len(paths), 3, size, size)
    for image, path in zip(images, paths):
        diff = (
            (image.float() / 255 - course_pixels(path, size)).abs().max().item()
        )
        assert diff <= tolerance, (
            f'{path.name} differs from the course path by {diff:.4f}'
        )


def cache_files(cache_dir):
    return sorted(p.name for p in Path(cache_dir).glob('*.pt'))


def image_files(root):
    """The visible JPEGs of root/celeba, sorted (pathlib's glob also matches
    hidden ones)."""
    return sorted(
        p for p in (root / 'celeba').glob('*.jpg') if not p.name.startswith('.')
    )


# ---- pixels ------------------------------------------------------------------


@pytest.mark.parametrize('size', [32, 16, 64])
def test_pixels_match_course_transforms(face_folder, cache_dir, size):
    images = helpers.load_faces(face_folder, size, cache_dir=cache_dir)
    assert_course_equal(images, image_files(face_folder), size)


def test_non_square_and_other_modes_match_course_transforms(
    tmp_path, cache_dir
):
    folder = tmp_path / 'odd'
    folder.mkdir()
    rng = np.random.default_rng(1)
    shapes = {
        'a_wide.jpg': (50, 80, 3),
        'b_tall.jpg': (71, 45, 3),
        'c_nearly.png': (64, 63, 3),
        'd_alpha.png': (40, 40, 4),
        'e_grey.png': (33, 48),
    }
    paths = []
    for name, shape in shapes.items():
        path = folder / name
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
        paths.append(path)
    images = helpers.load_faces(folder, 32, cache_dir=cache_dir)
    assert_course_equal(images, paths, 32, tolerance=2 / 255)


def test_thread_count_does_not_change_pixels(face_folder):
    files = faces.list_faces(face_folder)
    one, _, _ = faces.decode_all(face_folder, files, 16, workers=1)
    three, _, _ = faces.decode_all(face_folder, files, 16, workers=3)
    assert torch.equal(one, three)


# ---- cache reuse and rebuilds ------------------------------------------------


def test_second_call_is_a_cache_hit(
    face_folder, cache_dir, decode_calls, capsys
):
    first = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    assert 'Decoded 40 images at 16x16' in capsys.readouterr().out
    with no_warnings():
        second = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    assert decode_calls == [40]
    assert (
        'Loaded 40 decoded images at 16x16 from cache'
        in capsys.readouterr().out
    )
    assert torch.equal(first, second) and second.is_contiguous()


def test_cache_file_layout(face_folder, cache_dir):
    images = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    (name,) = cache_files(cache_dir)
    assert name.startswith('faces-') and '-16px-all-' in name
    state = torch.load(cache_dir / name, weights_only=True)
    assert set(state) == {'version', 'key', 'files', 'images', 'checksum'}
    assert state['files'] == [
        f'celeba/{p.name}' for p in image_files(face_folder)
    ]
    assert torch.equal(state['images'], images)
    assert state['checksum'] == faces.checksum(images)
    assert state['key'] in name


def mapped_files():
    """The files this process has memory-mapped (Linux)."""
    with open('/proc/self/maps', encoding='utf-8') as maps:
        return {Path(line.split(maxsplit=5)[5].strip())
                for line in maps if len(line.split(maxsplit=5)) == 6}


@pytest.mark.skipif(not Path('/proc/self/maps').exists(),
                    reason='reads the memory map of the process (Linux)')
def test_images_are_mapped_from_the_cache_file(face_folder, cache_dir):
    """Processes that load the same faces share the file's pages instead of
    each holding a copy: both the load that builds the cache and a later
    one hand out a tensor mapped from the file."""
    built = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    (name,) = cache_files(cache_dir)
    path = (cache_dir / name).resolve()
    assert path in mapped_files()
    loaded = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    assert torch.equal(loaded, built)
    loaded[0] = 0  # copy-on-write: this process's page, never the file
    del built, loaded
    with no_warnings():  # the file's checksum still holds
        reloaded = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    assert_course_equal(reloaded, image_files(face_folder), 16)


def test_split_and_cache_dir_must_be_named(face_folder, cache_dir):
    """A learner's load_faces(data_dir, size, n, 'train') is refused: taken
    positionally, 'train' would be a cache folder and the split 'all'."""
    with pytest.raises(TypeError, match='positional'):
        helpers.load_faces(face_folder, 16, None, 'train')


def test_default_cache_sits_beside_the_data(face_folder):
    helpers.load_faces(face_folder, 16)
    assert len(cache_files(face_folder.parent / faces.CACHE_DIR_NAME)) == 1
    assert not (face_folder / faces.CACHE_DIR_NAME).exists()


def replace_first_file_keeping_its_time(root):
    """New pixels and size, old mtime: as after `cp -p` or rsync of another
    image."""
    path = image_files(root)[0]
    info = path.stat()
    write_jpegs(path.parent, 1, seed=99, size=48)  # rewrites 000000.jpg
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert path.stat().st_size != info.st_size


def touch_first_file(root):
    path = image_files(root)[0]
    info = path.stat()
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns + 10**9))


def add_file(root):
    write_jpegs(root / 'celeba' / 'more', 1, seed=5)


def remove_last_file(root):
    image_files(root)[-1].unlink()


@pytest.mark.parametrize(
    'change',
    [
        replace_first_file_keeping_its_time,
        touch_first_file,
        add_file,
        remove_last_file,
    ],
)
def test_changed_files_rebuild_and_replace_the_cache(
    face_folder, cache_dir, decode_calls, change
):
    helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    before = cache_files(cache_dir)
    change(face_folder)
    images = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    assert len(decode_calls) == 2
    paths = sorted(p for p in face_folder.rglob('*.jpg'))
    assert_course_equal(images, paths, 16)
    after = cache_files(cache_dir)
    assert len(after) == 1 and after != before  # the stale file was deleted


def test_size_and_count_have_caches_of_their_own(
    face_folder, cache_dir, decode_calls
):
    helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    helpers.load_faces(face_folder, 8, cache_dir=cache_dir)
    helpers.load_faces(face_folder, 16, n_images=10, cache_dir=cache_dir)
    assert decode_calls == [40, 40, 10]
    assert len(cache_files(cache_dir)) == 3
    # still there: a hit
    helpers.load_faces(face_folder, 8, cache_dir=cache_dir)
    assert len(decode_calls) == 3


def test_n_images_takes_the_first_sorted_files(
    face_folder, cache_dir, decode_calls
):
    write_jpegs(face_folder / 'aaa', 2, seed=3)  # sorts before celeba/
    images = helpers.load_faces(
        face_folder, 16, n_images=5, cache_dir=cache_dir
    )
    assert decode_calls == [5]
    paths = sorted(
        face_folder.rglob('*.jpg'), key=lambda p: p.relative_to(face_folder)
    )
    assert_course_equal(images, paths[:5], 16)


# ---- damaged caches ----------------------------------------------------------


def truncate(path, images):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def random_bytes(path, images):
    path.write_bytes(np.random.default_rng(0).bytes(path.stat().st_size))


def flip_image_byte(path, images):
    data = bytearray(path.read_bytes())
    start = data.find(images.numpy().tobytes()[:64])
    assert start > 0, 'tensor bytes not found in the cache file'
    data[start + 100] ^= 0xFF
    path.write_bytes(bytes(data))


def edit(**changes):
    """A damage that rewrites fields of a valid cache file (checksum kept
    consistent)."""

    def damage(path, images):
        state = torch.load(path, weights_only=True)
        state.update(changes)
        if 'images' in changes:
            state['checksum'] = faces.checksum(state['images'])
        torch.save(state, path)

    damage.__name__ = 'edit_' + '_'.join(changes)
    return damage


@pytest.mark.parametrize(
    'damage',
    [
        truncate,
        random_bytes,
        flip_image_byte,
        edit(key='0' * 12),
        edit(version=0),
        edit(images=torch.zeros(40, 3, 16, 16, dtype=torch.int16)),
        edit(images=torch.zeros(40, 3, 8, 8, dtype=torch.uint8)),
        edit(images=torch.zeros(39, 3, 16, 16, dtype=torch.uint8)),
    ],
    ids=lambda damage: damage.__name__,
)
def test_damaged_cache_is_rebuilt(face_folder, cache_dir, decode_calls, damage):
    # A copy: the load maps the file, which the damage rewrites in place.
    good = helpers.load_faces(face_folder, 16, cache_dir=cache_dir).clone()
    (name,) = cache_files(cache_dir)
    damage(cache_dir / name, good)
    with one_warning('damaged or stale'):
        rebuilt = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    assert torch.equal(rebuilt, good)
    assert len(decode_calls) == 2
    with no_warnings():  # the rebuilt file is good again
        helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    assert len(decode_calls) == 2


def test_unwritable_cache_warns_and_still_returns_images(
    face_folder, cache_dir, monkeypatch, capsys
):
    def refuse(path, state):
        raise PermissionError(13, 'Permission denied', str(path))

    monkeypatch.setattr(faces, 'save_checkpoint', refuse)
    with one_warning('Could not write the decoded-image cache'):
        images = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    assert_course_equal(images, image_files(face_folder), 16)
    assert '(not cached)' in capsys.readouterr().out


# ---- folders and files -------------------------------------------------------


def test_flat_folder_of_images(tmp_path):
    paths = write_jpegs(tmp_path / 'flat', 6)
    images = helpers.load_faces(tmp_path / 'flat', 16)
    assert_course_equal(images, paths, 16)
    assert len(cache_files(tmp_path / faces.CACHE_DIR_NAME)) == 1


def test_hidden_files_and_folders_are_ignored(face_folder, cache_dir):
    write_jpegs(face_folder / '.ipynb_checkpoints', 3)
    (face_folder / 'celeba' / '.broken.jpg').write_text('not an image')
    write_jpegs(face_folder / 'celeba' / '.thumbs', 2)
    with no_warnings():
        images = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    assert_course_equal(images, image_files(face_folder), 16)


def test_extensions_in_any_case_count_and_others_do_not(tmp_path, cache_dir):
    folder = tmp_path / 'mixed'
    (path,) = write_jpegs(folder, 1)
    path.rename(folder / 'face.JPEG')
    (folder / 'notes.txt').write_text('not an image, and not named like one')
    images = helpers.load_faces(folder, 16, cache_dir=cache_dir)
    assert len(images) == 1


def test_unreadable_files_are_skipped_with_one_warning(face_folder, cache_dir):
    celeba = face_folder / 'celeba'
    jpeg = (celeba / '000001.jpg').read_bytes()
    (celeba / '000001.jpg').write_bytes(jpeg[: len(jpeg) // 2])  # cut short
    (celeba / '000030.jpg').write_text('this is a text file')  # wrong content
    (celeba / '000031.png').write_bytes(b'')  # empty
    with one_warning('Skipped 3 unreadable image file(s)') as caught:
        images = helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    for name in ('000001.jpg', '000030.jpg', '000031.png'):
        assert name in str(caught[0].message)
    good = [
        p
        for p in image_files(face_folder)
        if p.name not in ('000001.jpg', '000030.jpg')
    ]
    assert_course_equal(images, good, 16)
    # the cache holds the good images only: no warning next time
    with no_warnings():
        assert torch.equal(
            helpers.load_faces(face_folder, 16, cache_dir=cache_dir), images
        )


def test_warning_names_at_most_five_files(face_folder, cache_dir):
    for path in image_files(face_folder)[:8]:
        path.write_text('broken')
    with one_warning('Skipped 8 unreadable') as caught:
        helpers.load_faces(face_folder, 16, cache_dir=cache_dir)
    message = str(caught[0].message)
    assert '000004.jpg' in message and '000005.jpg' not in message
    assert 'and 3 more' in message


def test_all_unreadable_raises(tmp_path, cache_dir):
    folder = tmp_path / 'junk'
    folder.mkdir()
    for name in ('a.jpg', 'b.png'):
        (folder / name).write_text('no pixels here')
    with pytest.raises(
        ValueError, match=r'None of the 2 image files in .*junk'
    ):
        helpers.load_faces(folder, 16, cache_dir=cache_dir)
    assert cache_files(cache_dir) == []


def test_missing_folder_is_named(tmp_path):
    missing = tmp_path / 'no_such_faces'
    with pytest.raises(FileNotFoundError, match=r'no_such_faces.*prepare_data'):
        helpers.load_faces(missing, 16)


def test_folder_without_images_is_named(tmp_path):
    empty = tmp_path / 'empty_faces'
    (empty / 'celeba').mkdir(parents=True)
    (empty / 'celeba' / 'readme.txt').write_text('nothing')
    with pytest.raises(ValueError, match=r'empty_faces.*FACEGEN_DATA'):
        helpers.load_faces(empty, 16)


@pytest.mark.parametrize('bad', [0, -3, 32.0, '32', True])
def test_bad_sizes_are_refused(face_folder, cache_dir, bad):
    with pytest.raises(ValueError, match='image_size'):
        helpers.load_faces(face_folder, bad, cache_dir=cache_dir)
    with pytest.raises(ValueError, match='n_images'):
        helpers.load_faces(face_folder, 16, n_images=bad, cache_dir=cache_dir)
