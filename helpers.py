"""Everything the face-generation notebook needs that is not an exercise.

Data acquisition (download checked by hash, atomic extraction), run setup (seed, device),
pictures (image grids, loss curves, samples over epochs), checkpoints (atomic save,
safe load), the decoded-image cache and the precision choice. Nothing here imports the
notebook or the exercise code.
"""
import base64
import hashlib
import io
import http.client
import json
import operator
import os
import platform
import random
import shutil
import tempfile
import time
import urllib.request
import warnings
import zipfile
import zlib
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path, PurePosixPath

import matplotlib.pyplot as plt
import numpy as np
import torch
import torchvision.utils as vutils
from PIL import Image
from torch.optim.swa_utils import update_bn
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


_GIF_SCALE = 3            # each 32x32 face is drawn 96 pixels wide
_GIF_FRAME_MS = 400       # time per epoch in the animation ...
_GIF_LAST_FRAME_MS = 2000  # ... and on the final faces before it starts again


def save_samples_gif(samples, path, nrow=8):
    """An animated GIF of the fixed-z samples, one frame per epoch: samples[i] is the
    (N, 3, H, W) batch in [-1, 1] of epoch i + 1. The last frame is held longer."""
    if len(samples) == 0:
        raise ValueError('samples is empty: pass one batch of generated images per epoch.')
    frames = []
    for batch in samples:
        pixels = (_grid_pixels(batch, nrow, (-1, 1)) * 255).round().astype(np.uint8)
        frame = Image.fromarray(pixels)
        frames.append(frame.resize((frame.width * _GIF_SCALE, frame.height * _GIF_SCALE),
                                   Image.NEAREST))
    durations = [_GIF_FRAME_MS] * (len(frames) - 1) + [_GIF_LAST_FRAME_MS]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=durations, loop=0)
    return path


def show_gif(path):
    """An animated GIF for the notebook, embedded in the page (base64), so that it also
    plays in the exported HTML, which drops plain image/gif outputs."""
    from IPython.display import HTML  # only needed, and only present, in notebooks
    data = base64.b64encode(Path(path).read_bytes()).decode('ascii')
    return HTML(f'<img src="data:image/gif;base64,{data}" alt="{Path(path).name}">')


def plot_scores(scores, floor=None, path=None, label='SWD'):
    """The quality score after each epoch (lower is better), with the real-vs-real floor
    as a dashed line when given: how close the faces came to real ones, epoch by epoch."""
    if len(scores) == 0:
        raise ValueError('scores is empty: pass one score per epoch.')
    fig, ax = plt.subplots(figsize=(8, 3.5))
    epochs = np.arange(1, len(scores) + 1)
    ax.plot(epochs, scores, marker='o', label='generated vs held-out faces')
    if floor is not None:
        ax.axhline(floor, color='grey', linestyle='--', label='real vs real (floor)')
    ax.set_xlabel('epoch')
    ax.set_ylabel(f'{label} (lower is better)')
    ax.set_ylim(bottom=0)
    ax.legend()
    _save_figure(fig, path)
    return fig


def show_nearest_pairs(generated, train, pairs, path=None):
    """Generated faces (top row) above their nearest training faces (bottom row), with the
    pixel distance between them; pairs comes from metrics.nearest_pairs. Both image sets
    are uint8 (N, 3, H, W)."""
    top = generated[pairs['generated']].float() / 255     # (k, 3, H, W)
    bottom = train[pairs['train']].float() / 255          # (k, 3, H, W)
    k = len(top)
    fig, axes = plt.subplots(2, k, figsize=(1.2 * k, 2.8), squeeze=False)
    for i in range(k):
        for row, image in enumerate((top[i], bottom[i])):
            ax = axes[row, i]
            ax.imshow(image.permute(1, 2, 0).numpy())
            ax.set_xticks([])
            ax.set_yticks([])
        axes[1, i].set_xlabel(f'{pairs["distance"][i]:.1f}')
    axes[0, 0].set_ylabel('generated')
    axes[1, 0].set_ylabel('nearest\ntraining')
    fig.suptitle('The generated faces closest to a training face (L2 distance below)')
    _save_figure(fig, path)
    return fig


# ---------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------

class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read back."""


def atomic_write(path, write, mode='wb'):
    """Call write(file) on a temporary file in path's folder, then rename it to path, so
    a crash mid-write never leaves a half-written file behind. Returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(handle, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it the real file
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path, state):
    """torch.save state to path atomically (see atomic_write)."""
    return atomic_write(path, lambda f: torch.save(state, f))


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


GENERATOR_KEYS = ('state_dict', 'config', 'score')


def save_generator(path, G, config, score=None):
    """Publish a trained generator: {'state_dict', 'config', 'score'}, where config holds
    the Generator's keyword arguments (a plain dict) and score the plain-number results
    it was published with. Written atomically; a few MB for the course model."""
    state = {'state_dict': {name: value.detach().cpu()
                            for name, value in G.state_dict().items()},
             'config': dict(config), 'score': score}
    return save_checkpoint(path, state)


def load_generator(path, generator_class, device='cpu'):
    """The generator saved by save_generator, built with generator_class(**config), its
    weights loaded (weights_only), on device and in eval mode. Returns (G, info), where info
    is the saved dict without the weights: {'config', 'score'}."""
    state = load_checkpoint(path, map_location='cpu')
    missing = [key for key in GENERATOR_KEYS if key not in state]
    if missing:
        raise CheckpointError(
            f'{path} is not a published generator: it lacks {missing}. Training checkpoints '
            f'(run/checkpoint.pt) hold the generator under "G"; publish one with '
            f'helpers.save_generator(path, G, config, score).')
    G = generator_class(**state['config'])
    try:
        G.load_state_dict(state['state_dict'])
    except RuntimeError as err:
        raise CheckpointError(
            f'The weights in {path} do not fit {generator_class.__name__}'
            f'(**{state["config"]}): {err}'.splitlines()[0]) from err
    return G.to(device).eval(), {key: state[key] for key in ('config', 'score')}


# Settings that must be whole numbers of at least 1. image_size and precision are checked
# where they are used (the networks and choose_precision), also before any training.
_COUNTS = ('batch_size', 'z_size', 'conv_dim', 'n_epochs', 'sample_size', 'n_score',
           'print_every')


def check_config(config):
    """Raise a ValueError naming the first impossible setting, before anything is built."""
    for name in _COUNTS:
        _positive_int(config[name], name)
    if config.get('n_images') is not None:
        _positive_int(config['n_images'], 'n_images')
    if not 0 < config['lr'] < 1:
        raise ValueError(f"lr must be between 0 and 1 (DCGAN: 0.0002); got {config['lr']!r}.")
    for name in ('smooth', 'lr_decay'):
        if not isinstance(config[name], bool):
            raise ValueError(f'{name} must be True or False; got {config[name]!r}.')
    for name in ('beta1', 'beta2'):
        if not 0 <= config[name] < 1:
            raise ValueError(f'{name} must be in [0, 1) (DCGAN: beta1 0.5, beta2 0.999); '
                             f'got {config[name]!r}.')


# Settings that may change between a run and its resumption without changing what is trained.
_RESUMABLE_CHANGES = {'n_epochs', 'print_every'}


def training_state(config, epoch, nets, optimizers, losses, fixed_z, samples, scores):
    """The checkpoint for the end of an epoch: weights, the states of the optimizers (and
    of any learning-rate schedulers among them), losses, the fixed noise, its samples and
    the scores so far and the random-number state, as tensors and plain values."""
    return {
        'config': dict(config), 'epoch': epoch,
        **{name: net.state_dict() for name, net in nets.items()},
        **{name: optimizer.state_dict() for name, optimizer in optimizers.items()},
        'losses': {name: list(values) for name, values in losses.items()},
        'fixed_z': fixed_z.detach().cpu(),
        'samples': torch.stack(samples),  # (epochs, N, 3, S, S) in [-1, 1]
        'scores': [float(score) for score in scores],  # one per epoch, or none
        'rng': {'torch': torch.get_rng_state(),
                'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }


def _check_same_recipe(saved, config, path):
    """Refuse to resume a run whose settings differ in anything but its length (and in its
    length too when the learning rates fall to 0 over it: that changes the schedule)."""
    free = _RESUMABLE_CHANGES - ({'n_epochs'} if config.get('lr_decay') else set())
    changed = sorted(key for key in set(saved) | set(config)
                     if key not in free and saved.get(key) != config.get(key))
    if changed:
        diffs = ', '.join(f'{key} {saved.get(key)!r} there, {config.get(key)!r} here'
                          for key in changed)
        raise ValueError(
            f'{path} was saved by a run with other settings ({diffs}). Delete '
            f'{Path(path).parent} to start a new run, or set run_dir to another folder.')


def resume_training(path, config, nets, optimizers):
    """Load the checkpoint at path, if there is one, into nets and optimizers and restore the
    random-number state, so training goes on exactly where it stopped. Returns the
    checkpoint dict, or None when there is nothing to resume."""
    path = Path(path)
    if not path.exists():
        return None
    state = load_checkpoint(path)
    _check_same_recipe(state['config'], config, path)
    for name, module in {**nets, **optimizers}.items():
        module.load_state_dict(state[name])
    torch.set_rng_state(state['rng']['torch'])
    if state['rng']['cuda'] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state['rng']['cuda'])
    print(f'Resuming from {path}: {state["epoch"]} of {config["n_epochs"]} epochs done.')
    return state


# ---------------------------------------------------------------------------------------
# Decoded-image cache. Decoding 32,600 JPEGs takes seconds; reading them back as one
# uint8 tensor takes a fraction of one. The tensor lives beside the data, keyed by the
# files' names, sizes and times, and is checked on every load because it is only a copy.
# ---------------------------------------------------------------------------------------

CACHE_DIR_NAME = '.facegen-cache'
_CACHE_VERSION = 1        # bump whenever decoding or the file's layout changes
_DECODE_CHUNK = 256       # images per thread task: few tasks, yet a smooth progress bar
_NAMED_FAILURES = 5       # unreadable files named in the warning; the rest are counted
SPLITS = ('all', 'train', 'held_out')
HELD_OUT_SIZE = 2600      # course images never trained on, kept for the quality score ...
HELD_OUT_MAX_SHARE = 10   # ... but at most 1 in this many of a small folder's images


def _positive_int(value, name):
    """value as an int, or a ValueError when it is not a whole number of at least 1."""
    try:
        number = operator.index(value)  # accepts NumPy integers, refuses 32.0 and '32'
    except TypeError:
        number = 0
    if number < 1 or isinstance(value, bool):
        raise ValueError(f'{name} must be a whole number of at least 1; got {value!r}.')
    return number


def _how_to_get_data():
    """The sentence every missing-data error ends with."""
    return (f'Get the course images with helpers.prepare_data() (set {DATA_ENV} to use a '
            f'zip or folder you already have) and pass the folder it returns.')


def _list_faces(data_dir):
    """Paths (relative, POSIX style) of the images under data_dir, sorted.

    Hidden files and folders (names starting with '.') are left out: they hold notebook
    checkpoints, macOS resource forks and our own cache, never faces.
    """
    if not data_dir.is_dir():
        raise FileNotFoundError(f'There is no folder {data_dir}. {_how_to_get_data()}')
    found = []
    for folder, subfolders, names in os.walk(data_dir):
        subfolders[:] = [name for name in subfolders if not name.startswith('.')]
        relative = Path(folder).relative_to(data_dir)
        found += [(relative / name).as_posix() for name in names
                  if not name.startswith('.') and name.lower().endswith(IMAGE_EXTENSIONS)]
    if not found:
        raise ValueError(f'No images ({", ".join(IMAGE_EXTENSIONS)}) in {data_dir} or its '
                         f'subfolders. {_how_to_get_data()}')
    return sorted(found)


def _size_and_mtime(path):
    """(bytes, mtime in ns) of a file, or (-1, -1) when it cannot be read (a broken link):
    decoding then skips it with the other unreadable files."""
    try:
        info = os.stat(path)
    except OSError:
        return -1, -1
    return info.st_size, info.st_mtime_ns


def held_out_count(n_files):
    """How many of n_files images the held-out split keeps: 2,600 of the course's 32,600."""
    return min(HELD_OUT_SIZE, n_files // HELD_OUT_MAX_SHARE)


def _held_out_rank(name):
    """A fixed pseudo-random rank for a file name, the same on every machine and version."""
    return hashlib.sha1(name.encode()).hexdigest()


def split_files(files, split):
    """The sorted file names of one split: 'all', 'train' or 'held_out'.

    The held-out images are the held_out_count(len(files)) names of lowest SHA-1 hash, so
    the split depends on the names alone, never on a random seed or the torch version;
    'train' is every other image. The two never share a file.
    """
    if split not in SPLITS:
        raise ValueError(f'split must be one of {SPLITS}; got {split!r}.')
    if split == 'all':
        return list(files)
    held_out = set(sorted(files, key=_held_out_rank)[:held_out_count(len(files))])
    keep = split == 'held_out'
    return [name for name in files if (name in held_out) == keep]


def _cache_key(data_dir, files, image_size, n_images):
    """12 hex digits that change when any listed file is added, removed, resized or touched,
    or when image_size, n_images or the cache format change."""
    stats = [(name, *_size_and_mtime(data_dir / name)) for name in files]
    text = json.dumps([_CACHE_VERSION, image_size, n_images, stats])
    return hashlib.blake2b(text.encode(), digest_size=6).hexdigest()


def _cache_slot(data_dir, image_size, n_images, split):
    """The cache file name up to its key. A slot holds one file: a rebuild replaces it.

    Each split and n_images has a slot of its own, so quick runs, full runs and the
    held-out images of the same data do not keep throwing away each other's cache.
    """
    folder = hashlib.blake2b(str(data_dir.resolve()).encode(), digest_size=4).hexdigest()
    count = 'all' if n_images is None else f'first{n_images}'
    part = '' if split == 'all' else f'-{split}'
    return f'faces-{folder}-{image_size}px{part}-{count}'


def _default_cache_dir(data_dir):
    """.facegen-cache beside data_dir (never inside it, where ImageFolder would see it)."""
    parent = data_dir.resolve().parent if data_dir.name in ('', '..') else data_dir.parent
    return parent / CACHE_DIR_NAME


def metrics_cache_dir(data_dir):
    """Where scores of fixed real faces (evaluate.real_floor) are kept between runs:
    .facegen-cache/metrics beside data_dir."""
    return _default_cache_dir(Path(data_dir)) / 'metrics'


def _fit_square(img, size):
    """img scaled and cropped to size x size as the course transforms do on a PIL image:
    Resize(size) scales the short side to size (bilinear, aspect ratio kept, long side
    rounded down), then CenterCrop(size) keeps the middle."""
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
    """One image file as a (3, size, size) uint8 array, opened like ImageFolder does."""
    with Image.open(path) as img:
        rgb = _fit_square(img.convert('RGB'), size)
    return np.asarray(rgb).transpose(2, 0, 1)


def _decode_range(pixels, data_dir, files, start, stop, size):
    """Decode files[start:stop] into pixels[start:stop]; (index, reason) of each failure."""
    failures = []
    for index in range(start, stop):
        try:
            pixels[index] = _decode_face(data_dir / files[index], size)
        except Exception as err:  # Pillow raises many types; all mean "skip this file"
            failures.append((index, f'{type(err).__name__}: {err}'))
    return failures


def _usable_cores():
    """CPU cores this process may run on (fewer than os.cpu_count() in a container)."""
    if hasattr(os, 'sched_getaffinity'):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _decode_all(data_dir, files, size, workers=None):
    """Decode files into one (N, 3, size, size) uint8 tensor, in a pool of threads.

    Threads help because Pillow releases the GIL while it reads, decodes and resizes (about
    60% of the time per image here); only its header parsing in Python runs one thread at
    a time. Returns the tensor, the files it holds, and (file, reason) for each file left
    out as unreadable.
    """
    images = torch.empty((len(files), 3, size, size), dtype=torch.uint8)
    pixels = images.numpy()  # the same memory: threads write straight into the tensor
    failures = []
    with ThreadPoolExecutor(workers or _usable_cores()) as pool, \
            tqdm(total=len(files), desc=f'Decoding images at {size}x{size}', unit='img',
                 delay=2) as bar:  # no bar for a few quick images
        jobs = {}
        for start in range(0, len(files), _DECODE_CHUNK):
            stop = min(start + _DECODE_CHUNK, len(files))
            jobs[pool.submit(_decode_range, pixels, data_dir, files, start, stop, size)] = \
                stop - start
        for job in as_completed(jobs):
            failures += job.result()
            bar.update(jobs[job])
    if not failures:
        return images, files, []
    failures.sort()
    bad = {index for index, _ in failures}
    keep = [index for index in range(len(files)) if index not in bad]
    # Indexing copies into a compact tensor, so the cache does not store the dropped rows.
    return images[keep], [files[i] for i in keep], [(files[i], why) for i, why in failures]


def _describe(failures):
    """'a.jpg (reason), b.jpg (reason) and 3 more' for an error or warning message."""
    named = ', '.join(f'{name} ({why})' for name, why in failures[:_NAMED_FAILURES])
    rest = len(failures) - _NAMED_FAILURES
    return named + (f' and {rest} more' if rest > 0 else '')


def _checksum(images):
    """CRC-32 of the tensor's bytes: fast (about 1 GB/s) and catches any flipped byte."""
    return zlib.crc32(images.numpy())


def _read_cache(path, key, size):
    """The images in a cache file, after checking every field against what is expected.

    Raises ValueError, or whatever reading the file raised, when anything is off.
    """
    state = load_checkpoint(path)  # weights_only: a cache file cannot run code
    images, files = state['images'], state['files']
    if state['version'] != _CACHE_VERSION or state['key'] != key:
        raise ValueError('it was made for other files, settings or code')
    if (not isinstance(images, torch.Tensor) or images.dtype != torch.uint8
            or images.shape != (len(files), 3, size, size) or not images.is_contiguous()):
        raise ValueError('its image tensor has the wrong type or shape')
    if _checksum(images) != state['checksum']:
        raise ValueError('its checksum does not match the images')
    return images


def _load_cached(path, key, size):
    """The cached images, or None (with a warning if a file was there but unusable)."""
    if not path.is_file():
        return None
    try:
        return _read_cache(path, key, size)
    except Exception as err:  # only a copy: whatever went wrong, rebuilding fixes it
        warnings.warn(f'Cache file {path} is damaged or stale ({err}); rebuilding it.',
                      stacklevel=3)
        return None


def _save_cache(path, images, files, key):
    """Write the cache file atomically and delete older ones of its slot; False (with a
    warning) when the folder cannot be written, as the images in memory are still good."""
    state = {'version': _CACHE_VERSION, 'key': key, 'files': files, 'images': images,
             'checksum': _checksum(images)}
    try:
        save_checkpoint(path, state)
        slot = path.name.rsplit('-', 1)[0]  # the name without its key
        for old in path.parent.glob(f'{slot}-*.pt'):
            if old != path:
                old.unlink(missing_ok=True)
    # torch.save reports some write failures (a full disk) as RuntimeError.
    except (OSError, RuntimeError) as err:
        warnings.warn(f'Could not write the decoded-image cache {path} ({err}). Going on '
                      f'without it: the next run decodes the images again. Pass cache_dir= '
                      f'a writable folder to keep it.', stacklevel=4)
        return False
    return True


def _build_cache(data_dir, files, size, path, key):
    """Decode the images, report unreadable ones, cache the result; (images, cached?)."""
    images, kept, failures = _decode_all(data_dir, files, size)
    if not kept:
        raise ValueError(f'None of the {len(files):,} image files in {data_dir} could be '
                         f'read: {_describe(failures)}. {_how_to_get_data()}')
    if failures:
        warnings.warn(f'Skipped {len(failures):,} unreadable image file(s) in {data_dir}: '
                      f'{_describe(failures)}. Delete or replace them to silence this.',
                      stacklevel=3)
    return images, _save_cache(path, images, kept, key)


def load_faces(data_dir, image_size, n_images=None, cache_dir=None, split='all'):
    """The face images under data_dir as one uint8 tensor (N, 3, image_size, image_size).

    Pixels equal the course path (ImageFolder, Resize, CenterCrop, ToTensor) times 255.
    Images come in the sorted order of their paths under data_dir, hidden files left out.
    split picks 'all' of them, the 'train' images or the 'held_out' ones (see split_files:
    2,600 of the course's faces that training never sees, so the quality score can compare
    generated faces with unseen real ones); n_images keeps the first n_images of the
    split. Unreadable files are skipped with one warning. The tensor is cached in
    cache_dir (default: .facegen-cache beside data_dir) and rebuilt whenever the files,
    image_size, split or n_images change or the file is damaged.
    """
    started = time.perf_counter()
    data_dir = Path(data_dir)
    size = _positive_int(image_size, 'image_size')
    if n_images is not None:
        n_images = _positive_int(n_images, 'n_images')
    files = split_files(_list_faces(data_dir), split)[:n_images]
    if not files:
        raise ValueError(f'The {split!r} split of {data_dir} holds no images: a folder '
                         f'needs at least {HELD_OUT_MAX_SHARE} images to hold some out.')
    key = _cache_key(data_dir, files, size, n_images)
    cache_dir = Path(cache_dir) if cache_dir is not None else _default_cache_dir(data_dir)
    path = cache_dir / f'{_cache_slot(data_dir, size, n_images, split)}-{key}.pt'
    kind = {'all': 'images', 'train': 'training images', 'held_out': 'held-out images'}[split]
    images = _load_cached(path, key, size)
    if images is not None:
        print(f'Loaded {len(images):,} decoded {kind} at {size}x{size} from cache in '
              f'{time.perf_counter() - started:.1f} s')
        return images
    images, cached = _build_cache(data_dir, files, size, path, key)
    where = f'cached in {path}' if cached else 'not cached'
    print(f'Decoded {len(images):,} {kind} at {size}x{size} in '
          f'{time.perf_counter() - started:.1f} s ({where})')
    return images


# ---------------------------------------------------------------------------------------
# Speed settings: chosen once per machine, printed once, overridable by the caller.
# ---------------------------------------------------------------------------------------

PRECISIONS = ('auto', 'fp32', 'bf16')
_CPU_BF16_FLAGS = ('amx_bf16', 'avx512_bf16')  # native bf16 arithmetic on x86
_MIN_BF16_SPEEDUP = 1.15  # a smaller gain is within timing noise: keep fp32's precision
_PRECISION_ROUNDS = 3  # timed passes per number format in the 'auto' check
_CPUINFO = '/proc/cpuinfo'


def _cpuinfo_field(name):
    """The first value of a field in /proc/cpuinfo (Linux), or None."""
    try:
        with open(_CPUINFO) as f:
            for line in f:
                field, _, value = line.partition(':')
                if field.strip() == name:
                    return value.strip()
    except OSError:  # not Linux
        pass
    return None


def _cpu_flags():
    """The CPU's feature flags (e.g. 'avx2', 'avx512_bf16'); empty where unknown."""
    return set((_cpuinfo_field('flags') or '').split())


def cpu_name():
    """The CPU's model name, e.g. 'AMD EPYC 7R13 Processor', for benchmark reports."""
    return _cpuinfo_field('model name') or platform.processor() or 'unknown CPU'


def _cpu_has_bf16():
    """True when the CPU computes in bf16 natively rather than emulating it."""
    return bool(_cpu_flags() & set(_CPU_BF16_FLAGS))


def _cuda_has_fast_bf16(device):
    """True on Ampere or newer GPUs, whose tensor cores run bf16 at full speed."""
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8 and torch.cuda.is_bf16_supported()


def _timing_block(conv, in_channels, out_channels):
    """A strided conv (or transposed conv) with batch norm and ReLU, for the timing."""
    return torch.nn.Sequential(conv(in_channels, out_channels, 4, 2, 1, bias=False),
                               torch.nn.BatchNorm2d(out_channels), torch.nn.ReLU())


def _time_conv_workload(dtype, batch_size=128, repeats=3):
    """Seconds for one forward and backward pass through DCGAN-shaped strided convolutions
    at 32x32, channels_last, on the CPU: the best of `repeats` after one warm-up pass,
    under bf16 autocast when dtype is torch.bfloat16."""
    # A private random stream: timing must not shift the seeded run that follows.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        # The course's discriminator convolutions, then its generator's (conv_dim 32).
        layers = torch.nn.Sequential(
            _timing_block(torch.nn.Conv2d, 3, 32),             # (N, 32, 16, 16)
            _timing_block(torch.nn.Conv2d, 32, 64),            # (N, 64, 8, 8)
            _timing_block(torch.nn.Conv2d, 64, 128),           # (N, 128, 4, 4)
            _timing_block(torch.nn.ConvTranspose2d, 128, 64),  # (N, 64, 8, 8)
            _timing_block(torch.nn.ConvTranspose2d, 64, 32),   # (N, 32, 16, 16)
            torch.nn.ConvTranspose2d(32, 3, 4, 2, 1),          # (N, 3, 32, 32)
        ).to(memory_format=torch.channels_last)
        images = torch.randn(batch_size, 3, 32, 32).to(memory_format=torch.channels_last)
    seconds = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        with torch.autocast('cpu', dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = layers(images).float().square().mean()
        loss.backward()
        seconds.append(time.perf_counter() - start)
    return min(seconds[1:])  # the first pass includes oneDNN's one-off kernel set-up


def _auto_cpu_precision():
    """(dtype, reason) for 'auto' on the CPU: bf16 only where it measures clearly faster."""
    if not _cpu_has_bf16():
        return None, 'this CPU has no native bf16: bf16 would be slower'
    # The two formats take turns, so that a passing slowdown of a shared CPU hits both
    # alike; the fastest pass of each is compared.
    seconds = {torch.float32: [], torch.bfloat16: []}
    for _ in range(_PRECISION_ROUNDS):
        for dtype, times in seconds.items():
            times.append(_time_conv_workload(dtype, repeats=1))
    speedup = min(seconds[torch.float32]) / min(seconds[torch.bfloat16])
    if speedup >= _MIN_BF16_SPEEDUP:
        return torch.bfloat16, f'{speedup:.1f}x faster than fp32 in a quick check on this CPU'
    return None, (f'bf16 was only {speedup:.2f}x as fast as fp32 in a quick check on this '
                  f'CPU; {_MIN_BF16_SPEEDUP}x is needed to give up fp32 precision')


def _auto_cuda_precision(device):
    """(dtype, reason) for 'auto' on a GPU: bf16 from Ampere on, else fp32."""
    name = torch.cuda.get_device_name(device)
    if _cuda_has_fast_bf16(device):
        return torch.bfloat16, f'{name} has bf16 tensor cores'
    return None, f'{name} is older than Ampere, without fast bf16'


def _warn_if_slow_bf16(device):
    """Warn when bf16 was asked for on hardware that only emulates it."""
    if device.type == 'cpu' and not _cpu_has_bf16():
        hardware = f'This CPU ({cpu_name()}) has neither {" nor ".join(_CPU_BF16_FLAGS)}'
    elif device.type == 'cuda' and not _cuda_has_fast_bf16(device):
        hardware = f'{torch.cuda.get_device_name(device)} is older than Ampere'
    else:
        return
    warnings.warn(f'{hardware}, so bf16 is emulated and will be slower than fp32. Use '
                  f"precision='auto' or 'fp32'.", stacklevel=3)


def choose_precision(device, precision='auto'):
    """The autocast dtype for the training forward passes on device, or None for fp32.

    precision is 'auto' (bf16 where the hardware runs it fast: Ampere+ GPUs, and CPUs with
    native bf16 where a quick timing confirms it), 'fp32' or 'bf16'. On a GPU this also
    turns on cudnn.benchmark, as DCGAN's input shapes never change. Prints the choice.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ValueError(f'precision must be one of {", ".join(map(repr, PRECISIONS))}; '
                         f'got {precision!r}.')
    if device.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # fixed shapes: find the fastest kernels once
    if precision == 'fp32':
        dtype, reason = None, 'as requested'
    elif precision == 'bf16':
        _warn_if_slow_bf16(device)
        dtype, reason = torch.bfloat16, 'as requested'
    elif device.type == 'cuda':
        dtype, reason = _auto_cuda_precision(device)
    elif device.type == 'cpu':
        dtype, reason = _auto_cpu_precision()
    else:
        dtype, reason = None, f'no bf16 check for {device.type} devices'
    print(f'Precision: {"fp32" if dtype is None else "bf16 autocast"} ({reason})')
    return dtype


# ---------------------------------------------------------------------------------------
# Latent-space explorer: a generated face is a point z, so walking z from one seed's
# point to another's morphs one face into the other. Smooth morphs mean G learnt a
# continuous face space rather than memorising single pictures.
# ---------------------------------------------------------------------------------------

_MIN_SIN = 1e-6     # below this the ends are (anti)parallel: no single great circle
_FACE_PIXELS = 256  # the explorer's large face is about this wide
_TILE_PIXELS = 64   # ... and each face in its path strip about this wide
_MARK_COLOUR = (0.85, 0.1, 0.1)  # frame around the slider's face in the strip
_EXPLORER_NOTE = ('The interactive explorer needs Jupyter with ipywidgets (pip install '
                  'ipywidgets, then run this in a notebook); drawing a static grid instead.')


def _latent_vector(z, name):
    """z as a 1-D float64 CPU tensor; z may be (z_size,) or one row (1, z_size)."""
    if z.dim() == 2 and z.shape[0] == 1:
        z = z[0]
    if z.dim() != 1:
        raise ValueError(f'{name} must be one latent vector, (z_size,) or (1, z_size); got '
                         f'shape {tuple(z.shape)}. Pass a single row, e.g. z[i].')
    return z.detach().to('cpu', torch.float64)


def _slerp(a, b, t):
    """Points at fractions t (a column) of the way from a to b: the direction turns along
    the great circle through a and b while the length changes linearly."""
    length_a, length_b = a.norm(), b.norm()
    if length_a == 0 or length_b == 0:
        return (1 - t) * a + t * b
    u, v = a / length_a, b / length_b
    angle = torch.arccos(torch.dot(u, v).clamp(-1.0, 1.0))
    if torch.sin(angle) < _MIN_SIN:
        return (1 - t) * a + t * b
    direction = (torch.sin((1 - t) * angle) * u + torch.sin(t * angle) * v) / torch.sin(angle)
    return direction * ((1 - t) * length_a + t * length_b)


def latent_path(z_start, z_end, steps):
    """(steps, z_size) float32 latent points from z_start to z_end, ends included, on
    z_start's device.

    Gaussian latent vectors of size d lie almost all near the sphere of radius sqrt(d),
    so that is where G was trained. A straight line between two of them cuts inside the
    sphere (halfway between two random z its length is only about 0.7 of theirs) and the
    middle faces come out faded. Spherical interpolation (slerp) keeps every point at a
    length between those of the ends. Where the ends are (anti)parallel, or one is zero,
    there is no single great circle, so the path is the straight line instead.
    """
    start, end = _latent_vector(z_start, 'z_start'), _latent_vector(z_end, 'z_end')
    if start.shape != end.shape:
        raise ValueError(f'z_start and z_end must have the same size; got {start.numel()} '
                         f'and {end.numel()}. Draw both with the same z_size.')
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f'steps must be an integer of at least 2 (the two ends); '
                         f'got {steps!r}.')
    t = torch.linspace(0, 1, steps, dtype=torch.float64)[:, None]  # (steps, 1)
    return _slerp(start, end, t).to(z_start.device, torch.float32)


def seeded_z(seed, z_size, device='cpu'):
    """The latent vector (1, z_size) for seed: the same seed gives the same z everywhere.

    It is drawn on the CPU from a torch.Generator of its own, so it does not depend on
    the device and leaves torch's global random state (and so a seeded run) untouched.
    """
    generator = torch.Generator(device='cpu').manual_seed(seed)
    return torch.randn(1, z_size, generator=generator).to(device)


def _model_device(model):
    """The device of model's first parameter (the CPU for a model without any)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device('cpu')


def generate(G, z):
    """G's images for z, (N, 3, H, W) in [-1, 1] on the CPU, in eval mode (batch norm uses
    its running statistics) and without gradients; G's training mode is restored after."""
    was_training = G.training
    G.eval()  # batch norm uses its running statistics and does not update them
    try:
        with torch.no_grad():
            return G(z.to(_model_device(G))).cpu()
    finally:
        G.train(was_training)


def to_uint8(images, value_range=(-1, 1)):
    """Float images in value_range -> uint8 pixels in [0, 255], same shape, on the CPU."""
    low, high = value_range
    unit = (images.detach().float().cpu() - low) / (high - low)
    return (unit.clamp(0, 1) * 255).round().to(torch.uint8)


def sample_faces(G, z_size, n, seed=0, batch_size=500):
    """n faces from G as uint8 (n, 3, S, S), made from seeded noise so that the same seed
    gives the same faces; generated batch by batch in eval mode."""
    generator = torch.Generator().manual_seed(seed)  # the global random state stays as it is
    z = torch.randn(n, z_size, generator=generator)  # (n, z_size)
    return torch.cat([to_uint8(generate(G, chunk)) for chunk in z.split(batch_size)])


_RECALIBRATION_BATCHES = 50     # 12,800 faces: 20 batches left the score 10% noisier
_RECALIBRATION_BATCH_SIZE = 256


def recalibrate_batch_norm(G, z_size, seed=0):
    """Re-estimate G's batch-norm statistics for the weights it has now; returns G.

    During training each batch-norm layer keeps a running average dominated by the last
    ten or so batches (momentum 0.1) of a network that was still changing, so in eval
    mode its faces come out a
    little off. This runs G in training mode on fresh noise and replaces those averages
    with exact ones for the final weights (torch.optim.swa_utils.update_bn, fed with z).
    The weights stay as they are; the noise comes from its own seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    device = _model_device(G)
    batches = [torch.randn(_RECALIBRATION_BATCH_SIZE, z_size, generator=generator)
               for _ in range(_RECALIBRATION_BATCHES)]  # each (256, z_size)
    with torch.no_grad():
        update_bn(batches, G, device)
    return G


def _seed_pair_paths(z_size, seeds, steps):
    """The latent paths between consecutive seeds, stacked: (len(seeds) - 1) * steps rows."""
    if len(seeds) < 2:
        raise ValueError(f'seeds needs at least two seeds to walk between; got {seeds!r}.')
    pairs = zip(seeds[:-1], seeds[1:])
    return torch.cat([latent_path(seeded_z(a, z_size), seeded_z(b, z_size), steps)
                      for a, b in pairs])


def interpolation_grid(G, z_size, seeds, steps=8, path=None, title=None):
    """Faces along the latent path between each pair of consecutive seeds, one row per
    pair (seeds[0] to seeds[1], seeds[1] to seeds[2], ...), steps faces per row.
    Returns the Figure and writes it as a PNG when path is given."""
    images = generate(G, _seed_pair_paths(z_size, seeds, steps))
    return show_images(images, nrow=steps, value_range=(-1, 1), title=title, path=path)


def _in_kernel():
    """True when running in a Jupyter kernel, where widgets can be shown."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and hasattr(shell, 'kernel')  # terminal IPython has none


def _widgets_or_none():
    """The ipywidgets module when widgets can be shown here, else None."""
    if not _in_kernel():
        return None
    try:
        import ipywidgets
    except ImportError:
        return None
    return ipywidgets


def _png(pixels, scale):
    """PNG bytes of an (H, W, 3) array in [0, 1], each pixel enlarged to scale x scale."""
    image = Image.fromarray((pixels * 255).round().astype(np.uint8))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format='PNG')
    return buffer.getvalue()


def _mark_tile(pixels, index, size):
    """Colour the padding around face index of a one-row grid (padding 2) in place."""
    left, right = index * (size + 2), (index + 1) * (size + 2) + 2
    pixels[:2, left:right] = pixels[-2:, left:right] = _MARK_COLOUR
    pixels[:, left:left + 2] = pixels[:, right - 2:right] = _MARK_COLOUR
    return pixels


def _explorer_box(widgets, G, z_size, seeds, steps):
    """The explorer's widgets, already showing seeds[0]'s face; see explore."""
    start = widgets.IntText(value=seeds[0], description='start seed')
    end = widgets.IntText(value=seeds[1], description='end seed')
    position = widgets.IntSlider(value=0, min=0, max=steps - 1, description='position')
    whole = widgets.Checkbox(value=True, description='show the whole path')
    face, strip = widgets.Image(format='png'), widgets.Image(format='png')

    def update(_change=None):
        """Draw the face at the slider's position and, if asked for, the whole path."""
        z_path = latent_path(seeded_z(start.value, z_size), seeded_z(end.value, z_size), steps)
        images = generate(G, z_path)
        size = images.shape[-1]
        face.value = _png(_grid_pixels(images[position.value:position.value + 1], 1, (-1, 1)),
                          max(1, _FACE_PIXELS // size))
        strip_pixels = _mark_tile(_grid_pixels(images, steps, (-1, 1)), position.value, size)
        strip.value = _png(strip_pixels, max(1, _TILE_PIXELS // size))
        strip.layout.display = None if whole.value else 'none'

    for control in (start, end, position, whole):
        control.observe(update, names='value')
    update()
    controls = widgets.VBox([widgets.HBox([start, end]), widgets.HBox([position, whole])])
    return widgets.VBox([controls, face, strip])


def explore(G, z_size, seeds=(0, 1), steps=8):
    """Walk through G's latent space in a notebook: two seeds pick the end faces and a
    slider moves from one to the other along latent_path; the face at the slider is shown
    large, the whole path in a strip below it. Returns the widget box (end the cell with
    it to show it). Without a Jupyter kernel or ipywidgets it prints a note, draws
    interpolation_grid(G, z_size, seeds, steps) instead and returns that Figure."""
    if len(seeds) != 2:
        raise ValueError(f'explore walks between two seeds (start, end); got {seeds!r}. '
                         f'For a longer chain use interpolation_grid.')
    widgets = _widgets_or_none()
    if widgets is None:
        print(_EXPLORER_NOTE)
        return interpolation_grid(G, z_size, seeds, steps)
    return _explorer_box(widgets, G, z_size, seeds, steps)
