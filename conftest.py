"""pytest runs the notebook in quick mode unless FACEGEN_QUICK says
otherwise."""

import os
import shutil
from pathlib import Path

os.environ.setdefault('FACEGEN_QUICK', '1')


def pytest_sessionstart(session):
    """Each test run trains the quick notebook from scratch, not from an old
    checkpoint."""
    shutil.rmtree(Path(__file__).parent / 'run-quick', ignore_errors=True)
