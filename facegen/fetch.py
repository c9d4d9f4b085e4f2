"""The face images on disk: the folder or zip a user names, else the course
archive, downloaded with pooch (hash check, retry, progress bar).

A path the user names is always the data used: a folder is read in place, a
zip is extracted into a data folder that records which archive it came
from, and a data folder that holds other data is an error, never used.
"""
import json
import os
import shutil
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import pooch
from tqdm.auto import tqdm

from .settings import DATA_ENV, DEFAULT_DATA_DIR, live_progress

DATA_URL = ('https://s3.amazonaws.com/video.udacity-data.com/topher/2018/'
            'November/5be7eb6f_processed-celeba-small/'
            'processed-celeba-small.zip')
DATA_SHA256 = ('431c22b690e741a51ee4658c1c86c577143849ba9d78d72f78854eaec52e'
               '4aab')
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
SOURCE_RECORD = '.facegen-source.json'  # in a data folder: which archive


def is_image_name(name):
    """True for a visible file name ending in an image extension (any case).
    Hidden names (notebook checkpoints, macOS '._' forks) are never faces."""
    return not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)


def _image_names(folder):
    """The names of the visible images in folder and below, folder by
    folder, hidden folders (our cache among them) left out."""
    for _, subfolders, names in os.walk(folder):
        subfolders[:] = [name for name in subfolders
                         if not name.startswith('.')]
        yield [name for name in names if is_image_name(name)]


def has_images(folder):
    """True when folder or a visible folder below it holds an image; stops
    at the first folder with one."""
    return any(_image_names(folder))


def count_images(folder):
    """Number of visible image files under folder, at any depth (0 for a
    folder that does not exist)."""
    return sum(len(names) for names in _image_names(folder))


def _report(folder, how):
    """Print which images will be used and how many; hand folder back."""
    print(f'Found {count_images(folder):,} images in {folder} ({how})')
    return folder


def _unsafe_entry(name):
    """True for zip entry names that could write outside the target."""
    path = PurePosixPath(name.replace('\\', '/'))
    has_drive = len(name) > 1 and name[1] == ':'  # 'C:...' on Windows
    return path.is_absolute() or has_drive or '..' in path.parts


def _zip_members(archive):
    """The entries to extract, after refusing an archive with unsafe ones."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
    unsafe = [m.filename for m in members if _unsafe_entry(m.filename)]
    if unsafe:
        raise ValueError(
            f'Refusing to extract {archive}: entry {unsafe[0]!r} would be '
            f'written outside the data folder (absolute path or "..").')
    # macOS zips carry '__MACOSX/._*.jpg' resource files that look like images.
    return [m for m in members if not m.filename.startswith('__MACOSX/')]


def _data_root(tree):
    """The folder of an extracted archive that becomes the data folder: the
    one top folder that archives usually wrap their contents in, unless it
    holds the images itself (then it stays, so that the images keep the
    names they have in the course archive, 'celeba/000001.jpg')."""
    entries = [entry for entry in tree.iterdir()
               if not entry.name.startswith('.')]
    if len(entries) == 1 and entries[0].is_dir():
        top = entries[0]
        if not any(is_image_name(entry.name) for entry in top.iterdir()):
            return top
    return tree


def _damaged(archive, err):
    """The error to raise when reading the archive's contents fails."""
    return ValueError(
        f'{archive} is damaged ({err}). Download it again, or set {DATA_ENV} '
        f'to a good copy of the archive or to an extracted folder.')


def _archive_record(archive):
    """What identifies an archive: its SHA-256 (and name, for messages)."""
    return {'archive': Path(archive).name,
            'sha256': pooch.file_hash(str(archive))}


def _read_record(data_dir):
    """The source record of a data folder, or None when it has none."""
    try:
        return json.loads((data_dir / SOURCE_RECORD).read_text('utf-8'))
    except (OSError, ValueError):
        return None


def _extract_archive(archive, data_dir, record):
    """Extract archive so that its contents become data_dir, all or nothing.

    Everything goes into a temporary folder beside data_dir first and is
    renamed into place at the end, so an interrupted or failed extraction
    leaves no half data_dir. The record of the archive goes in with it.
    """
    try:
        members = _zip_members(archive)
    except zipfile.BadZipFile as err:
        raise _damaged(archive, err) from err
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f'.{data_dir.name}-extracting-',
                                    dir=data_dir.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in tqdm(members, desc=f'Extracting {archive.name}',
                               unit='file', disable=not live_progress()):
                zf.extract(member, scratch)
        root = _data_root(scratch)
        if not has_images(root):
            raise ValueError(
                f'{archive} holds no images '
                f'({", ".join(IMAGE_EXTENSIONS)}).')
        (root / SOURCE_RECORD).write_text(json.dumps(record), 'utf-8')
        if data_dir.exists():
            data_dir.rmdir()  # empty (checked); Windows cannot rename onto it
        root.rename(data_dir)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise _damaged(archive, err) from err
    finally:
        # Whatever happened, nothing but data_dir (whole or absent) stays.
        shutil.rmtree(scratch, ignore_errors=True)
    return data_dir


def _holds_other_data(data_dir, archive):
    """The error for a data folder whose images did not come from archive."""
    saved = _read_record(data_dir)
    origin = (f'the images of {saved["archive"]}' if saved
              else 'images of unknown origin')
    return FileExistsError(
        f'{data_dir} already holds {origin}, not those of {archive}, so it '
        f'cannot be used for {archive}. Pass another data folder (evaluate.py '
        f'--data-dir, prepare_data(data_dir=...)) to extract {archive.name} '
        f'there, or delete {data_dir}.')


def _from_archive(archive, data_dir):
    """data_dir holding archive's images: extracted now, or earlier."""
    if not zipfile.is_zipfile(archive):
        raise ValueError(
            f'{archive} is not a zip archive, or it is damaged (e.g. cut '
            f'short). Download it again, or set {DATA_ENV} to an extracted '
            f'folder.')
    record = _archive_record(archive)
    if data_dir.is_dir() and any(data_dir.iterdir()):
        saved = _read_record(data_dir)
        same = saved is not None and saved['sha256'] == record['sha256']
        # A folder without a record is what earlier versions made from the
        # course archive; it holds that archive's images.
        legacy = (saved is None and record['sha256'] == DATA_SHA256
                  and has_images(data_dir))
        if same or legacy:
            return _report(data_dir, f'extracted from {archive.name}')
        raise _holds_other_data(data_dir, archive)
    _check_fillable(data_dir)
    _extract_archive(archive, data_dir, record)
    return _report(data_dir, f'extracted from {archive.name}')


def _downloader():
    """pooch's HTTP downloader, with a progress bar where it can redraw."""
    return pooch.HTTPDownloader(progressbar=live_progress(),
                                headers={'User-Agent': 'facegen'})


def _download(data_dir):
    """Download the course archive beside data_dir (pooch checks its hash
    and tries once more on failure), extract it, delete the archive."""
    name = Path(DATA_URL).name
    fetcher = pooch.create(path=data_dir.parent, base_url='',
                           registry={name: f'sha256:{DATA_SHA256}'},
                           urls={name: DATA_URL}, retry_if_failed=1)
    archive = data_dir.parent / name
    try:
        try:
            fetcher.fetch(name, downloader=_downloader())
        except (OSError, ValueError) as err:  # requests' errors are OSErrors
            raise RuntimeError(
                f'Downloading {DATA_URL} failed twice ({err}). Download the '
                f'archive yourself (e.g. in a browser), check that its '
                f'SHA-256 is {DATA_SHA256}, and set {DATA_ENV}=/path/to/'
                f'{name} (or to an extracted folder).') from err
        return _extract_archive(archive, data_dir, {
            'archive': name, 'sha256': DATA_SHA256})
    finally:
        archive.unlink(missing_ok=True)


def prepare_data(data_dir=DEFAULT_DATA_DIR, source=None):
    """The folder of face images to train on; images may sit at any depth.

    source (default: the FACEGEN_DATA variable) is a folder, used in place,
    or a zip archive, extracted into data_dir; with neither, the course
    archive is downloaded into data_dir. A data_dir that holds images of
    another archive is refused with an error that says what to do.
    """
    data_dir = Path(data_dir)
    if source in (None, ''):
        source = os.environ.get(DATA_ENV) or None  # unset or empty: download
    if source is None:
        if data_dir.is_dir() and has_images(data_dir):
            saved = _read_record(data_dir)  # None: put there by hand, or
            return _report(data_dir,        # by an older version
                           f"extracted from {saved['archive']} earlier"
                           if saved else 'already there')
        _check_fillable(data_dir)
        _download(data_dir)
        return _report(data_dir, 'downloaded')
    source = Path(source).expanduser()
    if source.is_dir():
        if not has_images(source):
            raise ValueError(
                f'No images found in {source} or its subfolders '
                f'({", ".join(IMAGE_EXTENSIONS)}); set {DATA_ENV} to a '
                f'folder of face images or to the course zip.')
        return _report(source, 'used in place')
    if not source.exists():
        raise FileNotFoundError(
            f'Data source {source} does not exist (from the source argument '
            f'or {DATA_ENV}). Point {DATA_ENV} at the course zip or a folder '
            f'of images, or unset it to download the data.')
    return _from_archive(source, data_dir)


def _check_fillable(data_dir):
    """Fail before a long download when data_dir is in the way."""
    if data_dir.exists() and (not data_dir.is_dir()
                              or any(data_dir.iterdir())):
        raise FileExistsError(
            f'{data_dir} exists but holds no images, so it cannot be '
            f'filled. Delete it, or pass another data_dir.')
