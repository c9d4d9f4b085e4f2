"""Style that a linter can hold: ruff, with the settings in ruff.toml."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_finds_nothing():
    ruff = shutil.which('ruff', path=str(Path(sys.executable).parent)) or \
        shutil.which('ruff')
    assert ruff, 'ruff is missing: pip install -r requirements.txt'
    done = subprocess.run([ruff, 'check', '--no-cache', '.'], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
