"""Shared pytest helpers: small face-like image folders made on the fly,
the solved notebook's cells, and train.py's options for a tiny run."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests import helpers, dcgan, problem_unittests

# train.py options for a run of seconds on 16x16 faces (write_jpegs' sizes)
TINY = ['--image-size', '16', '--conv-dim', '8', '--z-size', '8',
        '--batch-size', '32', '--n-score', '16', '--sample-size', '4',
        '--precision', 'fp32', '--print-every', '4']


def notebook_cells(cell_type=None):
    """The solved notebook's cells as nbformat dicts, in order; only those of
    cell_type ('code' or 'markdown') when given."""
    import export  # after the sys.path line above
    cells = json.loads(export.NOTEBOOK.read_text(encoding='utf-8'))['cells']
    return [cell for cell in cells
            if cell_type is None or cell['cell_type'] == cell_type]


def write_jpegs(folder, n, size=64, seed=0):
    """Write n random-colour JPEGs (size x size) named 000000.jpg, ... into
    folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        # A smooth gradient plus noise: JPEG-friendly and different per image.
        base = rng.integers(0, 256, size=3)
        ramp = np.linspace(0, 1, size)[None, :, None]
        pixels = (base * ramp + rng.normal(0, 20, (size, size, 3))).clip(0, 255)
        path = folder / f'{i:06d}.jpg'
        Image.fromarray(pixels.astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


@pytest.fixture
def face_folder(tmp_path):
    """An ImageFolder root laid out like the course data: root/celeba/*.jpg
    (40 images)."""
    root = tmp_path / 'processed_celeba_small'
    write_jpegs(root / 'celeba', 40)
    return root


@pytest.fixture(scope='module')
def one_thread():
    """Tiny networks run fastest on one thread, and a second thread that
    waits for a busy core slows every step down many times over. (Runs
    compared to the last bit must also share their number of threads.)"""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
