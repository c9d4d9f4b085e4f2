"""pytest runs the notebook in quick mode unless FACEGEN_QUICK says otherwise."""
import os

os.environ.setdefault('FACEGEN_QUICK', '1')
