"""Metric results cached on disk under a hash of everything they depend on.

A score of fixed real images (the real-vs-real floor) takes tens of seconds
and never changes while the images and the metric's code stay the same.
`cached_metric` keys each result by the metric's name and settings, the source
of the module that computes it and the bytes of every image set, so any change
to one of them computes it afresh; a missing or damaged cache file is computed
again, never trusted.
"""

import hashlib
import inspect
import json
import warnings
from pathlib import Path

from ..files import atomic_write
from .metric_main import METRICS, calc_metric


def _metric_source(name):
    """The source file of the module that computes the metric called name, as
    bytes."""
    function = METRICS[name]
    # For a functools.partial, the function it wraps.
    function = getattr(function, 'func', function)
    return Path(inspect.getsourcefile(function)).read_bytes()


def fingerprint(name, *image_sets):
    """A hex digest of the metric (name, settings, code) and of every image
    set's bytes."""
    digest = hashlib.sha256()
    digest.update(name.encode())
    digest.update(repr(getattr(METRICS[name], 'keywords', None)).encode())
    digest.update(_metric_source(name))
    for images in image_sets:  # uint8 (n, 3, S, S)
        digest.update(f'{images.dtype} {tuple(images.shape)}'.encode())
        digest.update(images.contiguous().numpy().tobytes())
    return digest.hexdigest()


def _read_record(path, key):
    """The record saved at path if it is intact and made for key, else None."""
    try:
        record = json.loads(Path(path).read_text(encoding='utf-8'))
    except (OSError, ValueError):  # not there yet, or cut short / garbled
        return None
    if not isinstance(record, dict) or record.get('key') != key:
        return None
    if not isinstance(record.get('value'), float):
        return None
    return record


def cached_metric(name, *image_sets, cache_dir=None):
    """calc_metric(name, *image_sets), read from cache_dir when an earlier
    call stored the same computation there; the record then has 'cached':
    True. cache_dir None: no cache."""
    if cache_dir is None:
        return calc_metric(name, *image_sets)
    key = fingerprint(name, *image_sets)
    path = Path(cache_dir) / f'{name}-{key[:16]}.json'
    record = _read_record(path, key)
    if record is not None:
        return {**record, 'cached': True}
    record = calc_metric(name, *image_sets)
    try:
        atomic_write(
            path, lambda out: json.dump({**record, 'key': key}, out), mode='w'
        )
    except OSError as err:  # the result is good; only keeping it failed
        warnings.warn(
            f'Could not keep the {name} result in {path} ({err}); it will be '
            f'computed again next time. Pass a writable cache_dir to keep it.',
            stacklevel=2,
        )
    return record
