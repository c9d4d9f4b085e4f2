"""Switches read from the environment, the course's recipe, config checks.

The notebook's parameters cell is the one place its hyperparameters are
written; COURSE is the recipe of the original course project, the baseline
that experiments/ measures ours against and the shape of the precision
check's timing network.
"""
import operator
import os
import sys

DATA_ENV = 'FACEGEN_DATA'    # a local archive or folder instead of download
QUICK_ENV = 'FACEGEN_QUICK'  # '1' shrinks data and epochs for tests and CI
DEFAULT_DATA_DIR = 'processed_celeba_small/'  # where the course data lands

# The course project's recipe (DCGAN paper values, 32x32 faces).
COURSE = dict(batch_size=128, image_size=32, z_size=100, conv_dim=32,
              lr=0.0002, beta1=0.5, beta2=0.999, smooth=False,
              lr_decay=False, ema_decay=None)

_TRUE_WORDS = ('1', 'true', 'yes')
_FALSE_WORDS = ('0', '')

# Settings that must be whole numbers of at least 1. image_size and
# precision are checked where they are used (the networks and
# choose_precision), also before any training.
_COUNTS = ('batch_size', 'z_size', 'conv_dim', 'n_epochs', 'sample_size',
           'n_score', 'print_every')


def quick_mode():
    """True when FACEGEN_QUICK asks for a short run ('1', 'true', 'yes')."""
    value = os.environ.get(QUICK_ENV, '').strip().lower()
    if value in _TRUE_WORDS:
        return True
    if value in _FALSE_WORDS:
        return False
    # A typo such as 'ture' must not silently start an hours-long full run.
    raise ValueError(
        f'{QUICK_ENV}={os.environ[QUICK_ENV]!r} is not understood. Use one '
        f'of {", ".join(_TRUE_WORDS)} for quick mode, or 0 / leave it unset '
        f'for a full run.')


def live_progress():
    """True where a progress bar redraws in place: a terminal, or a Jupyter
    kernel (notebook, Colab). False where output goes to a file or a pipe (a
    log, CI, or nowhere, as in train.py's other processes), which would keep
    every redraw: plain lines are printed there instead. The bar draws on
    standard error, the lines on standard output: both must be a
    terminal."""
    ipython = sys.modules.get('IPython')  # imported by every kernel
    shell = ipython.get_ipython() if ipython is not None else None
    in_kernel = getattr(shell, 'kernel', None) is not None  # not a terminal
    return in_kernel or (sys.stdout.isatty() and sys.stderr.isatty())


def positive_int(value, name):
    """value as an int, or a ValueError when it is not a whole number >= 1."""
    try:
        number = operator.index(value)  # NumPy ints pass; 32.0 and '32' not
    except TypeError:
        number = 0
    if number < 1 or isinstance(value, bool):
        raise ValueError(
            f'{name} must be a whole number of at least 1; got {value!r}.')
    return number


def check_config(config):
    """Raise a ValueError naming the first impossible setting."""
    for name in _COUNTS:
        positive_int(config[name], name)
    if config.get('n_images') is not None:
        positive_int(config['n_images'], 'n_images')
    if not 0 < config['lr'] < 1:
        raise ValueError(f"lr must be between 0 and 1 (DCGAN: 0.0002); got "
                         f"{config['lr']!r}.")
    for name in ('smooth', 'lr_decay'):
        if not isinstance(config[name], bool):
            raise ValueError(
                f'{name} must be True or False; got {config[name]!r}.')
    decay = config.get('ema_decay')
    if decay is not None and (isinstance(decay, bool)
                              or not isinstance(decay, (int, float))
                              or not 0 < decay < 1):
        raise ValueError(
            f'ema_decay must be None (keep the last weights) or between 0 '
            f'and 1, e.g. 0.999; got {decay!r}.')
    for name in ('beta1', 'beta2'):
        if not 0 <= config[name] < 1:
            raise ValueError(
                f'{name} must be in [0, 1) (DCGAN: beta1 0.5, beta2 0.999); '
                f'got {config[name]!r}.')
