"""Everything the face-generation notebook needs that is not an exercise.

Data acquisition (download checked by hash, atomic extraction), run setup (seed, device),
pictures (image grids, loss curves, samples over epochs) and checkpoints (atomic save,
safe load). Nothing here imports the notebook or the exercise code.
"""
import hashlib
import http.client
import os
import random
import shutil
import tempfile
import urllib.request
import zipfile
import zlib
from pathlib import Path, PurePosixPath

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision.utils as vutils
from tqdm.auto import tqdm

# ---------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------

DATA_URL = ('https://s3.amazonaws.com/video.udacity-data.com/topher/2018/November/'
            '5be7eb6f_processed-celeba-small/processed-celeba-small.zip')
DATA_SHA256 = '431c22b690e741a51ee4658c1c86c577143849ba9d78d72f78854eaec52e4aab'
DATA_ENV = 'FACEGEN_DATA'    # a local archive or folder instead of the download
QUICK_ENV = 'FACEGEN_QUICK'  # '1' shrinks data and epochs for tests and CI

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png')
EXPECTED_LAYOUT = 'ROOT/celeba/*.jpg (an ImageFolder root holding one folder of images)'

_TRUE_WORDS = ('1', 'true', 'yes')
_FALSE_WORDS = ('0', '')


def quick_mode():
    """True when FACEGEN_QUICK asks for a short run ('1', 'true', 'yes'; any case)."""
    value = os.environ.get(QUICK_ENV, '').strip().lower()
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    # A typo such as 'ture' must not silently start an hours-long full run.
    raise ValueError(
        f'{QUICK_ENV}={os.environ[QUICK_ENV]!r} is not understood. Use one of '
        f'{", ".join(_TRUE_WORDS)} for quick mode, or 0 / leave it unset for a full run.')


def count_images(folder):
    """Number of image files (.jpg, .jpeg, .png, any case) under folder, recursively."""
    total = 0
    for _, _, files in os.walk(folder):
        total += sum(name.lower().endswith(IMAGE_EXTENSIONS) for name in files)
    return total


def _has_direct_images(folder):
    """True when folder itself (not a subfolder) holds at least one image file."""
    return any(entry.is_file() and entry.name.lower().endswith(IMAGE_EXTENSIONS)
               for entry in os.scandir(folder))


def _subfolders(folder):
    """Immediate subfolders of folder, sorted, hidden ones included (ImageFolder sees them)."""
    return sorted(Path(entry.path) for entry in os.scandir(folder) if entry.is_dir())


def _is_image_root(folder):
    """True when folder is a directory with at least one image in some subfolder."""
    folder = Path(folder)
    return folder.is_dir() and any(count_images(sub) for sub in _subfolders(folder))


def _check_image_root(root):
    """Raise if ImageFolder would fail on root: every subfolder becomes a class and
    a class folder without images (say .ipynb_checkpoints) makes it raise."""
    for sub in _subfolders(root):
        if count_images(sub) == 0:
            raise ValueError(
                f'{sub} holds no images, but every subfolder of {root} is read as a class '
                f'of images. Delete or move {sub} (expected layout: {EXPECTED_LAYOUT}).')


def _report(root):
    """Print where the images are and how many, and hand root back."""
    print(f'Found {count_images(root):,} images in {root}')
    return root


def _root_from_folder(folder):
    """The ImageFolder root for a user's folder: the root itself, or the image folder's
    parent when the images sit directly in folder (e.g. FACEGEN_DATA=.../celeba)."""
    if _is_image_root(folder):
        _check_image_root(folder)
        return folder
    if _has_direct_images(folder):
        parent = folder.resolve().parent
        # The parent becomes the root, so any sibling folder would become a class too.
        others = [sub for sub in _subfolders(parent) if sub != folder.resolve()]
        if others:
            raise ValueError(
                f'{folder} holds images directly, so its parent {parent} would be the '
                f'dataset root, but the parent also holds {others[0].name}/. Move the '
                f'images into a folder of their own, e.g. faces/celeba/*.jpg, and use faces/.')
        return parent
    raise ValueError(
        f'No images found in {folder} or its subfolders. Expected {EXPECTED_LAYOUT}, '
        f'or the image folder itself; set {DATA_ENV} to such a folder or to the course zip.')


def _unsafe_entry(name):
    """True for zip entry names that could write outside the target folder."""
    path = PurePosixPath(name.replace('\\', '/'))
    has_drive = len(name) > 1 and name[1] == ':'  # 'C:...' on Windows
    return path.is_absolute() or has_drive or '..' in path.parts


def _zip_members(archive):
    """The entries to extract, after refusing the archive if any entry is unsafe."""
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
    unsafe = [m.filename for m in members if _unsafe_entry(m.filename)]
    if unsafe:
        raise ValueError(
            f'Refusing to extract {archive}: entry {unsafe[0]!r} would be written outside '
            f'the data folder (absolute path or ".."). Use the course archive instead.')
    # macOS zips carry '__MACOSX/._*.jpg' resource files that look like images.
    return [m for m in members if not m.filename.startswith('__MACOSX/')]


def _find_root_in(tree):
    """The shallowest folder under tree (tree included) that is an ImageFolder root."""
    level = [tree]
    while level:
        for folder in level:
            if any(_has_direct_images(sub) for sub in _subfolders(folder)):
                return folder
        level = [sub for folder in level for sub in _subfolders(folder)]
    return None


def _ensure_free(data_dir):
    """Fail early (before a long download) if data_dir is in the way of the rename."""
    if data_dir.exists() and (not data_dir.is_dir() or any(data_dir.iterdir())):
        raise FileExistsError(
            f'{data_dir} exists but holds no images in a subfolder ({EXPECTED_LAYOUT}), '
            f'so it cannot be filled. Delete it, or pass another data_dir.')


def _damaged(archive, err):
    """The error to raise when reading the archive's contents fails part-way."""
    return ValueError(
        f'{archive} is damaged ({err}). Download it again, or set {DATA_ENV} to a '
        f'good copy of the archive or to an extracted folder.')


def _extract_archive(archive, data_dir):
    """Extract archive so that its image root becomes data_dir, all or nothing.

    Everything goes into a temporary folder beside data_dir first and is renamed into
    place at the end, so an interrupted or failed extraction leaves no half data_dir.
    """
    archive, data_dir = Path(archive), Path(data_dir)
    if not zipfile.is_zipfile(archive):
        raise ValueError(
            f'{archive} is not a zip archive, or it is damaged (e.g. cut short). Download '
            f'the course archive again, or set {DATA_ENV} to an extracted folder.')
    try:
        members = _zip_members(archive)
    except zipfile.BadZipFile as err:
        raise _damaged(archive, err) from err
    _ensure_free(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f'.{data_dir.name}-extracting-',
                                    dir=data_dir.parent))
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in tqdm(members, desc=f'Extracting {archive.name}', unit='file'):
                zf.extract(member, scratch)
        root = _find_root_in(scratch)
        if root is None:
            raise ValueError(f'{archive} holds no folder of images; expected {EXPECTED_LAYOUT}.')
        if data_dir.exists():
            data_dir.rmdir()  # empty (checked above); Windows cannot rename onto it
        root.rename(data_dir)
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise _damaged(archive, err) from err
    finally:
        # Whatever happened, nothing but data_dir (complete or absent) stays behind.
        shutil.rmtree(scratch, ignore_errors=True)
    return data_dir


def _fetch(url, dest):
    """Download url into the file dest with a progress bar (the only network access)."""
    request = urllib.request.Request(url, headers={'User-Agent': 'facegen-helpers'})
    with urllib.request.urlopen(request, timeout=60) as response, open(dest, 'wb') as out:
        size = int(response.headers.get('Content-Length') or 0) or None
        with tqdm(total=size, unit='B', unit_scale=True, unit_divisor=1024,
                  desc=f'Downloading {Path(url).name}') as bar:
            while chunk := response.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))


def _sha256(path):
    """Hex SHA-256 of a file, read in chunks so big archives need little memory."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _download_archive(dest):
    """Download the course archive to dest and check its hash; one retry on failure."""
    for attempt in (1, 2):
        try:
            _fetch(DATA_URL, dest)
        except (OSError, http.client.HTTPException) as err:  # URLError is an OSError
            problem = f'the connection failed ({err})'
        else:
            digest = _sha256(dest)
            if digest == DATA_SHA256:
                return dest
            problem = f'the file is incomplete or changed (SHA-256 {digest[:12]}...)'
        Path(dest).unlink(missing_ok=True)
        if attempt == 1:
            print(f'Download failed: {problem}. Trying once more.')
    raise RuntimeError(
        f'Downloading {DATA_URL} failed twice; last time {problem}. Download the archive '
        f'yourself (e.g. in a browser), check that its SHA-256 is {DATA_SHA256}, and '
        f'set {DATA_ENV}=/path/to/processed-celeba-small.zip (or to an extracted folder).')


def prepare_data(data_dir='processed_celeba_small/', source=None):
    """Make sure the face images are on disk; return the folder for get_dataloader.

    The returned folder is an ImageFolder root (it holds e.g. celeba/*.jpg). `source`
    (default: the FACEGEN_DATA variable) is a folder, used in place, or a zip archive,
    extracted into data_dir; with neither, the course archive is downloaded and checked.
    Once data_dir holds images it is returned at once: delete it to extract again.
    """
    data_dir = Path(data_dir)
    if source in (None, ''):
        source = os.environ.get(DATA_ENV) or None  # unset or empty: download
    source = Path(source).expanduser() if source is not None else None

    if source is not None and source.is_dir():
        return _report(_root_from_folder(source))
    if _is_image_root(data_dir):
        _check_image_root(data_dir)
        return _report(data_dir)
    if source is not None:
        if not source.exists():
            raise FileNotFoundError(
                f'Data source {source} does not exist (from the source argument or '
                f'{DATA_ENV}). Point {DATA_ENV} at the course zip or an extracted folder, '
                f'or unset it to download the data.')
        return _report(_extract_archive(source, data_dir))

    _ensure_free(data_dir)
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    # The partial download sits beside data_dir: same disk, easy to spot, removed always.
    archive = data_dir.parent / (Path(DATA_URL).name + '.part')
    try:
        _download_archive(archive)
        _extract_archive(archive, data_dir)
    finally:
        archive.unlink(missing_ok=True)
    return _report(data_dir)


# ---------------------------------------------------------------------------------------
# Run setup
# ---------------------------------------------------------------------------------------

def seed_everything(seed):
    """Seed Python, NumPy and torch (CPU and every GPU) so a run can be repeated."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)  # also done by manual_seed; explicit for readers
    print(f'Random seed: {seed}')


def choose_device():
    """The first CUDA GPU when there is one, else the CPU; says which."""
    if torch.cuda.is_available():
        device = torch.device('cuda')
        print(f'Using device: cuda ({torch.cuda.get_device_name(device)})')
    else:
        device = torch.device('cpu')
        print('Using device: cpu (no CUDA GPU found; full training will be slow)')
    return device


def count_parameters(model):
    """Number of trainable parameters (those with requires_grad) in model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ---------------------------------------------------------------------------------------
# Pictures. Figures come from pyplot so they show in the notebook; end the calling line
# with ';' there, or the returned Figure is drawn a second time.
# ---------------------------------------------------------------------------------------

def _as_float_cpu(images):
    """A detached float32 CPU copy of a batch (N, 3, H, W), for drawing or saving."""
    if images.dim() != 4:
        raise ValueError(f'Expected a batch of images (N, C, H, W); got shape '
                         f'{tuple(images.shape)}. Add a batch dimension with unsqueeze(0).')
    return images.detach().to('cpu', torch.float32)


def _grid_pixels(images, nrow, value_range):
    """An (H, W, 3) array in [0, 1]: the batch laid out as a padded grid."""
    grid = vutils.make_grid(_as_float_cpu(images), nrow=nrow, padding=2, pad_value=1.0,
                            normalize=True, value_range=value_range)
    return grid.permute(1, 2, 0).numpy()


def _save_figure(fig, path):
    """Write fig as a PNG when a path is given, creating its folder."""
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100, bbox_inches='tight')


def show_images(images, nrow=8, value_range=(0, 1), title=None, path=None):
    """Draw a batch (N, 3, H, W) as a grid, nrow images per row; value_range is the
    range of the pixel values ((0, 1) for data, (-1, 1) for generator output)."""
    pixels = _grid_pixels(images, nrow, value_range)
    height, width = pixels.shape[:2]
    fig, ax = plt.subplots(figsize=(min(12, width / 40 + 1), min(12, height / 40 + 1)))
    ax.imshow(pixels)
    ax.axis('off')
    if title:
        ax.set_title(title)
    _save_figure(fig, path)
    return fig


def _moving_average(values, window):
    """Mean of each run of `window` consecutive values (len(values) - window + 1 of them)."""
    return np.convolve(values, np.ones(window) / window, mode='valid')


def plot_losses(losses, path=None):
    """Plot per-batch losses {'D': [...], 'G': [...]}: raw values faint, moving average bold."""
    missing = {'D', 'G'} - set(losses)
    if missing:
        raise KeyError(f'losses needs the keys D and G (lists of per-batch losses); '
                       f'missing {sorted(missing)}.')
    fig, ax = plt.subplots(figsize=(8, 4))
    for key, label, colour in (('D', 'discriminator', 'tab:blue'),
                               ('G', 'generator', 'tab:orange')):
        values = np.asarray(losses[key], dtype=float)
        if len(values) == 0:
            continue
        # About 50 windows over the run: smooth enough to see the trend, not the noise.
        window = max(1, len(values) // 50)
        ax.plot(values, color=colour, linewidth=0.5, alpha=0.3)
        steps = np.arange(window - 1, len(values))
        ax.plot(steps, _moving_average(values, window), color=colour, label=label)
    ax.set_xlabel('batch')
    ax.set_ylabel('loss')
    ax.legend()
    _save_figure(fig, path)
    return fig


def save_image_grid(images, path, nrow=8, value_range=(-1, 1)):
    """Write a batch (N, 3, H, W) as one PNG grid (e.g. the fixed-z samples of an epoch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    vutils.save_image(_as_float_cpu(images), path, nrow=nrow, padding=2, pad_value=1.0,
                      normalize=True, value_range=value_range)
    return path


def samples_over_epochs(samples, path=None, max_rows=8, first_epoch=1):
    """One row of generated images per epoch; samples[i] (N, 3, H, W) in [-1, 1] is from
    epoch first_epoch + i. With more epochs than max_rows, evenly spaced ones are shown."""
    if len(samples) == 0:
        raise ValueError('samples is empty: pass one batch of generated images per epoch.')
    rows = np.unique(np.linspace(0, len(samples) - 1, min(max_rows, len(samples)))
                     .round().astype(int))
    fig, axes = plt.subplots(len(rows), 1, figsize=(8, 1.1 * len(rows)), squeeze=False)
    for ax, index in zip(axes[:, 0], rows):
        ax.imshow(_grid_pixels(samples[index][:8], nrow=8, value_range=(-1, 1)))
        ax.set_ylabel(f'epoch {first_epoch + index}', rotation=0, ha='right', va='center')
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    _save_figure(fig, path)
    return fig


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------

class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read back."""


def save_checkpoint(path, state):
    """torch.save state to path atomically: a temporary file in the same folder, then a
    rename, so a crash mid-save never leaves a half-written checkpoint behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(handle, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the checkpoint
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(path, map_location='cpu'):
    """Read a checkpoint dict saved by save_checkpoint (tensors and plain values only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f'No checkpoint at {path}. Check the path, or train first so one is saved.')
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        if 'Unsupported global' in str(err):
            raise CheckpointError(
                f'{path} holds Python objects other than tensors and plain values, which '
                f'weights_only loading refuses. Save state dicts and plain dicts, lists and '
                f'numbers only (e.g. vars(args) rather than args), then save it again.'
            ) from err
        raise CheckpointError(
            f'{path} is damaged or is not a PyTorch checkpoint ({type(err).__name__}). '
            f'Delete it and train again (or restore a good copy).') from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f'{path} holds a {type(state).__name__}, not a checkpoint dict. Save checkpoints '
            f'with save_checkpoint(path, {{...}}).')
    return state
