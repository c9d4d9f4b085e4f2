"""Files that are never left half-written, and checkpoints read safely."""
import os
import tempfile
from pathlib import Path

import torch


# The permissions a plain open() would give a new file (mkstemp's are
# 0600: the owner only). Read once: os.umask can only be read by setting it.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_NEW_FILE_MODE = 0o666 & ~_UMASK


class CheckpointError(RuntimeError):
    """A checkpoint file exists but cannot be read back."""


def atomic_write(path, write, mode='wb'):
    """Call write(file) on a temporary file in path's folder, then rename it
    to path, so a crash mid-write never leaves a half-written file behind.
    Returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp',
                                    dir=path.parent)
    try:
        with os.fdopen(handle, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename makes it real
        os.chmod(temp, _NEW_FILE_MODE)  # readable as any other new file
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return path


def save_checkpoint(path, state):
    """torch.save state to path atomically (see atomic_write)."""
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, map_location='cpu', mmap=False):
    """A checkpoint dict saved by save_checkpoint (tensors and plain values
    only: torch.load with weights_only=True). mmap=True maps the tensors
    from the file instead of reading them into memory: pages are read when
    touched, and processes that map the same file share them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f'No checkpoint at {path}. Check the path, or train first so one '
            f'is saved.')
    try:
        state = torch.load(path, map_location=map_location, weights_only=True,
                           mmap=mmap)
    except Exception as err:  # UnpicklingError, RuntimeError, EOFError, ...
        if 'Unsupported global' in str(err):
            raise CheckpointError(
                f'{path} holds Python objects other than tensors and plain '
                f'values, which weights_only loading refuses. Save state '
                f'dicts and plain dicts, lists and numbers only (e.g. '
                f'vars(args) rather than args), then save it again.'
            ) from err
        raise CheckpointError(
            f'{path} is damaged or is not a PyTorch checkpoint '
            f'({type(err).__name__}). Delete it and train again (or restore '
            f'a good copy).') from err
    if not isinstance(state, dict):
        raise CheckpointError(
            f'{path} holds a {type(state).__name__}, not a checkpoint dict. '
            f'Save checkpoints with save_checkpoint(path, {{...}}).')
    return state
