"""Face images as one uint8 tensor: listed once, split, decoded, cached.

Decoding 32,600 JPEGs takes seconds; reading them back as one tensor takes
a fraction of one. The tensor is kept beside the data, keyed by the files'
names, sizes and times, and checked on every load because it is a copy.
It is memory-mapped from that file, not read into each process's memory:
processes on one machine that train on the same faces (torchrun) share one
copy in the operating system's page cache (202,599 faces at 64x64 are
2.5 GB).
"""
import hashlib
import json
import os
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from .fetch import IMAGE_EXTENSIONS, is_image_name
from .files import load_checkpoint, save_checkpoint
from .settings import DATA_ENV, live_progress, positive_int

CACHE_DIR_NAME = '.facegen-cache'
_CACHE_VERSION = 1     # bump whenever decoding or the file's layout changes
_DECODE_CHUNK = 256    # images per thread task: few tasks, a smooth bar
_NAMED_FAILURES = 5    # unreadable files named in the warning; rest counted
SPLITS = ('all', 'train', 'held_out')
HELD_OUT_SIZE = 2600      # course images never trained on, for the score ...
HELD_OUT_MAX_SHARE = 10   # ... but at most 1 in this many of a small folder


def _how_to_get_data():
    """The sentence every missing-data error ends with."""
    return (f'Get the course images with helpers.prepare_data() (set '
            f'{DATA_ENV} to use a zip or folder you already have) and pass '
            f'the folder it returns.')


def list_faces(data_dir):
    """Paths (relative, POSIX style) of the images under data_dir, sorted.

    Hidden files and folders (names starting with '.') are left out: they
    hold notebook checkpoints, macOS resource forks and our own cache.
    """
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(
            f'There is no folder {data_dir}. {_how_to_get_data()}')
    found = []
    for folder, subfolders, names in os.walk(data_dir):
        subfolders[:] = [name for name in subfolders
                         if not name.startswith('.')]
        relative = Path(folder).relative_to(data_dir)
        found += [(relative / name).as_posix() for name in names
                  if is_image_name(name)]
    if not found:
        raise ValueError(
            f'No images ({", ".join(IMAGE_EXTENSIONS)}) in {data_dir} or its '
            f'subfolders. {_how_to_get_data()}')
    return sorted(found)


def _size_and_mtime(path):
    """(bytes, mtime in ns) of a file, or (-1, -1) when it cannot be read (a
    broken link): decoding then skips it with the other unreadable files."""
    try:
        info = os.stat(path)
    except OSError:
        return -1, -1
    return info.st_size, info.st_mtime_ns


def held_out_count(n_files):
    """How many of n_files the held-out split keeps: 2,600 of 32,600."""
    return min(HELD_OUT_SIZE, n_files // HELD_OUT_MAX_SHARE)


def _held_out_rank(name):
    """A fixed pseudo-random rank for a file name, the same everywhere."""
    return hashlib.sha1(name.encode()).hexdigest()


def split_files(files, split):
    """The sorted file names of one split: 'all', 'train' or 'held_out'.

    The held-out images are the held_out_count(len(files)) names of lowest
    SHA-1 hash, so the split depends on the names alone, never on a seed or
    the torch version; 'train' is every other image.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}; got {split!r}.')
    if split == 'all':
        return list(files)
    held_out = set(sorted(files, key=_held_out_rank)
                   [:held_out_count(len(files))])
    keep = split == 'held_out'
    return [name for name in files if (name in held_out) == keep]


def is_training_file(data_dir):
    """A test of one image path for torchvision's ImageFolder
    (is_valid_file=...): True for an image of data_dir's training split,
    False for a held-out one (or a file that is not a visible image)."""
    held_out = set(split_files(list_faces(data_dir), 'held_out'))

    def is_training(path):
        name = Path(os.path.relpath(path, data_dir)).as_posix()
        return is_image_name(Path(path).name) and name not in held_out
    return is_training


def held_out_fingerprint(data_dir):
    """12 hex digits naming data_dir's held-out split: the same for the same
    held-out file names, different when the folder given splits otherwise
    (its subfolder celeba/ ranks its images by other names and holds out
    other faces). save_generator keeps it; evaluate.py compares."""
    names = split_files(list_faces(data_dir), 'held_out')
    text = '\n'.join(names)
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _cache_key(data_dir, files, image_size, n_images):
    """12 hex digits that change when any listed file is added, removed,
    resized or touched, or when image_size, n_images or the format change."""
    stats = [(name, *_size_and_mtime(data_dir / name)) for name in files]
    text = json.dumps([_CACHE_VERSION, image_size, n_images, stats])
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _cache_slot(data_dir, image_size, n_images, split):
    """The cache file name up to its key. A slot holds one file: a rebuild
    replaces it. Each split and n_images has a slot of its own, so quick
    runs, full runs and the held-out images of the same data do not keep
    throwing away each other's cache."""
    folder = hashlib.blake2b(str(data_dir.resolve()).encode(),
                             digest_size=4).hexdigest()
    count = 'all' if n_images is None else f'first{n_images}'
    part = '' if split == 'all' else f'-{split}'
    return f'faces-{folder}-{image_size}px{part}-{count}'


def default_cache_dir(data_dir):
    """.facegen-cache beside data_dir (never inside it)."""
    data_dir = Path(data_dir)
    parent = (data_dir.resolve().parent if data_dir.name in ('', '..')
              else data_dir.parent)
    return parent / CACHE_DIR_NAME


def metrics_cache_dir(data_dir):
    """Where scores of fixed real faces (score.real_floor) are kept between
    runs: .facegen-cache/metrics beside data_dir."""
    return default_cache_dir(data_dir) / 'metrics'


def _fit_square(img, size):
    """img scaled and cropped to size x size as the course transforms do:
    Resize(size) scales the short side to size (bilinear, aspect kept, long
    side rounded down), then CenterCrop(size) keeps the middle."""
    width, height = img.size
    if width <= height:
        new_size = (size, int(size * height / width))
    else:
        new_size = (int(size * width / height), size)
    img = img.resize(new_size, Image.Resampling.BILINEAR)
    left = int(round((new_size[0] - size) / 2.0))
    top = int(round((new_size[1] - size) / 2.0))
    return img.crop((left, top, left + size, top + size))


def _decode_face(path, size):
    """One image file as a (3, size, size) uint8 array, in RGB."""
    with Image.open(path) as img:
        rgb = _fit_square(img.convert('RGB'), size)
    return np.asarray(rgb).transpose(2, 0, 1)


def _decode_range(pixels, data_dir, files, start, stop, size):
    """Decode files[start:stop] into pixels[start:stop]; (index, reason) of
    each failure."""
    failures = []
    for index in range(start, stop):
        try:
            pixels[index] = _decode_face(data_dir / files[index], size)
        except Exception as err:  # Pillow raises many types: all mean skip
            failures.append((index, f'{type(err).__name__}: {err}'))
    return failures


def _usable_cores():
    """CPU cores this process may run on (fewer than os.cpu_count() in a
    container)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def decode_all(data_dir, files, size, workers=None):
    """Decode files into one (N, 3, size, size) uint8 tensor, in threads.

    Threads help because Pillow releases the GIL while it reads, decodes
    and resizes (about 60% of the time per image here). Returns the tensor,
    the files it holds, and (file, reason) for each unreadable file left
    out.
    """
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    pixels = images.numpy()  # the same memory: threads write straight in
    failures = []
    with ThreadPoolExecutor(workers or _usable_cores()) as pool, \
            tqdm(total=len(files), desc=f'Decoding images at {size}x{size}',
                 unit='img', delay=2,  # no bar for a few images
                 disable=not live_progress()) as bar:
        jobs = {}
        for start in range(0, len(files), _DECODE_CHUNK):
            stop = min(start + _DECODE_CHUNK, len(files))
            job = pool.submit(_decode_range, pixels, data_dir, files, start,
                              stop, size)
            jobs[job] = stop - start
        for job in as_completed(jobs):
            failures += job.result()
            bar.update(jobs[job])
    if not failures:
        return images, files, []
    failures.sort()
    bad = {index for index, _ in failures}
    keep = [index for index in range(len(files)) if index not in bad]
    # Indexing copies into a compact tensor: the cache skips dropped rows.
    return (images[keep], [files[i] for i in keep],
            [(files[i], why) for i, why in failures])


def _describe(failures):
    """'a.jpg (reason), b.jpg (reason) and 3 more', for a message."""
    named = ', '.join(f'{name} ({why})'
                      for name, why in failures[:_NAMED_FAILURES])
    rest = len(failures) - _NAMED_FAILURES
    return named + (f' and {rest} more' if rest > 0 else '')


def checksum(images):
    """CRC-32 of the tensor's bytes: fast, and catches any flipped byte."""
    return zlib.crc32(images.numpy())


def _read_cache(path, key, size):
    """The images in a cache file, after checking every field.

    Raises ValueError, or whatever reading the file raised, when anything
    is off.
    """
    # weights_only: a cache cannot run code; mmap: pages shared, not copied
    state = load_checkpoint(path, mmap=True)
    images, files = state['images'], state['files']
    if state['version'] != _CACHE_VERSION or state['key'] != key:
        raise ValueError('it was made for other files, settings or code')
    if (not isinstance(images, torch.Tensor) or images.dtype != torch.uint8
            or images.shape != (len(files), 3, size, size)
            or not images.is_contiguous()):
        raise ValueError('its image tensor has the wrong type or shape')
    if checksum(images) != state['checksum']:
        raise ValueError('its checksum does not match the images')
    return images


def _load_cached(path, key, size):
    """The cached images, or None (warning when a file was unusable)."""
    if not path.is_file():
        return None
    try:
        return _read_cache(path, key, size)
    except Exception as err:  # only a copy: rebuilding fixes whatever it is
        warnings.warn(f'Cache file {path} is damaged or stale ({err}); '
                      f'rebuilding it.', stacklevel=3)
        return None


def _save_cache(path, images, files, key):
    """Write the cache file atomically and delete older ones of its slot;
    False (with a warning) when the folder cannot be written, as the images
    in memory are still good."""
    state = {'version': _CACHE_VERSION, 'key': key, 'files': files,
             'images': images, 'checksum': checksum(images)}
    try:
        save_checkpoint(path, state)
    # torch.save reports some write failures (a full disk) as RuntimeError.
    except (OSError, RuntimeError) as err:
        warnings.warn(
            f'Could not write the decoded-image cache {path} ({err}). Going '
            f'on without it: the next run decodes the images again. Pass '
            f'cache_dir= a writable folder to keep it.', stacklevel=4)
        return False
    slot = path.name.rsplit('-', 1)[0]  # the name without its key
    for old in path.parent.glob(f'{slot}-*.pt'):
        if old != path:
            try:
                old.unlink(missing_ok=True)
            except OSError:  # mapped by a running process (Windows): later
                pass
    return True


def _build_cache(data_dir, files, size, path, key):
    """Decode, report unreadable files, cache the result; (images, cached?)."""
    images, kept, failures = decode_all(data_dir, files, size)
    if not kept:
        raise ValueError(
            f'None of the {len(files):,} image files in {data_dir} could be '
            f'read: {_describe(failures)}. {_how_to_get_data()}')
    if failures:
        warnings.warn(
            f'Skipped {len(failures):,} unreadable image file(s) in '
            f'{data_dir}: {_describe(failures)}. Delete or replace them to '
            f'silence this.', stacklevel=3)
    return images, _save_cache(path, images, kept, key)


def _locate(data_dir, size, n_images, split, cache_dir):
    """(the split's file names, their cache key, the cache file's path)."""
    if n_images is not None:
        n_images = positive_int(n_images, 'n_images')
    # One walk over the folder serves the split and the cache's key.
    files = split_files(list_faces(data_dir), split)[:n_images]
    if not files:
        raise ValueError(
            f'The {split!r} split of {data_dir} holds no images: a folder '
            f'needs at least {HELD_OUT_MAX_SHARE} images to hold some out.')
    key = _cache_key(data_dir, files, size, n_images)
    cache_dir = (Path(cache_dir) if cache_dir is not None
                 else default_cache_dir(data_dir))
    slot = _cache_slot(data_dir, size, n_images, split)
    return files, key, cache_dir / f'{slot}-{key}.pt'


def cache_file(data_dir, image_size, n_images=None, *, split='all',
               cache_dir=None):
    """The file in which load_faces with these arguments keeps its decoded
    faces (which exists once load_faces has run and could write it)."""
    data_dir = Path(data_dir)
    size = positive_int(image_size, 'image_size')
    return _locate(data_dir, size, n_images, split, cache_dir)[2]


def load_faces(data_dir, image_size, n_images=None, *, split='all',
               cache_dir=None):
    """The face images under data_dir as one uint8 tensor
    (N, 3, image_size, image_size).

    Pixels equal the course path (ImageFolder, Resize, CenterCrop,
    ToTensor) times 255, in the sorted order of the images' paths under
    data_dir (at any depth; hidden files left out). split picks 'all', the
    'train' images or the 'held_out' ones (see split_files); n_images keeps
    the first n_images of the split. Unreadable files are skipped with one
    warning. split and cache_dir are named, never positional: a 'train'
    in the wrong place would otherwise silently become a cache folder. The
    tensor is cached in cache_dir (default: .facegen-cache
    beside data_dir) and rebuilt whenever the files, image_size, split or
    n_images change or the file is damaged. The tensor returned from the
    cache is memory-mapped from its file (copy-on-write: writing to it
    changes this process's pages only, never the file).
    """
    started = time.perf_counter()
    data_dir, size = Path(data_dir), positive_int(image_size, 'image_size')
    files, key, path = _locate(data_dir, size, n_images, split, cache_dir)
    kind = {'all': 'images', 'train': 'training images',
            'held_out': 'held-out images'}[split]
    images = _load_cached(path, key, size)
    if images is not None:
        print(f'Loaded {len(images):,} decoded {kind} at {size}x{size} from '
              f'cache in {time.perf_counter() - started:.1f} s')
        return images
    images, cached = _build_cache(data_dir, files, size, path, key)
    if cached:  # mapped like every later load, so this process shares it too
        images = _read_cache(path, key, size)
    where = f'cached in {path}' if cached else 'not cached'
    print(f'Decoded {len(images):,} {kind} at {size}x{size} in '
          f'{time.perf_counter() - started:.1f} s ({where})')
    return images
