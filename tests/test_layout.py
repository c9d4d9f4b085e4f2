"""The layout a newcomer relies on: helpers.py is one page over facegen/,
arrows point one way, and nothing the notebook imports loads dcgan.py."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / 'facegen'
# Lowest first: a module may import only modules before it in this list.
LAYERS = ['settings', 'files', 'fetch', 'faces', 'runtime', 'sampling',
          'plots', 'explorer', 'metrics', 'score', 'run', 'report', 'html']
PROJECT_TOP = {'helpers', 'dcgan', 'evaluate', 'export', 'train',
               'problem_unittests', 'experiments'}


def package_imports(path):
    """The facegen modules (top level of the package) that path imports,
    and the project's top-level modules it imports."""
    tree = ast.parse(path.read_text(encoding='utf-8'))
    inside, top = set(), set()
    parts = path.relative_to(PACKAGE).with_suffix('').parts
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = parts[:len(parts) - node.level]  # the package it is in
            target = [*base, *(node.module or '').split('.')]
            target = [name for name in target if name]
            if target:
                inside.add(target[0])
            else:  # 'from . import x'
                inside.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split('.')[0])
        elif isinstance(node, ast.Import):
            top.update(alias.name.split('.')[0] for alias in node.names)
    return inside, top


def layer_of(path):
    return path.relative_to(PACKAGE).parts[0].removesuffix('.py')


@pytest.mark.parametrize('path', sorted(p for p in PACKAGE.rglob('*.py')
                                        if p.name != '__init__.py'),
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_package_modules_import_only_lower_ones(path):
    inside, top = package_imports(path)
    own = layer_of(path)
    allowed = set(LAYERS[:LAYERS.index(own) + 1])  # itself: its subpackage
    assert inside <= allowed, f'{path.name} imports upward: {inside - allowed}'
    assert not top & PROJECT_TOP, f'{path.name} imports {top & PROJECT_TOP}'


def test_every_package_module_has_a_layer():
    modules = {layer_of(p) for p in PACKAGE.rglob('*.py')
               if p.name != '__init__.py'}
    assert modules == set(LAYERS)


def test_helpers_is_one_page_of_imports():
    tree = ast.parse((ROOT / 'helpers.py').read_text(encoding='utf-8'))
    kinds = {type(node).__name__ for node in tree.body[1:]}
    assert kinds <= {'ImportFrom', 'Assign'}, 'helpers.py only gathers tools'
    assert len((ROOT / 'helpers.py').read_text().splitlines()) <= 80


def test_importing_helpers_loads_no_exported_or_script_code():
    code = ('import sys, helpers; '
            'print(sorted(set(sys.modules) & {"dcgan", "evaluate", '
            '"export", "problem_unittests"}))')
    done = subprocess.run([sys.executable, '-c', code], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '[]'


def test_the_notebook_imports_no_script_or_generated_module():
    cells = json.loads((ROOT / 'dlnd_face_generation.ipynb').read_text(
        encoding='utf-8'))['cells']
    for cell in cells:
        if cell['cell_type'] != 'code':
            continue
        tree_source = '\n'.join(
            line for line in ''.join(cell['source']).splitlines()
            if not line.startswith(('%', '!')))
        _, top = package_imports_of_source(tree_source)
        assert not top & {'dcgan', 'evaluate', 'export'}, tree_source


def package_imports_of_source(source):
    top = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            top.update(alias.name.split('.')[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            top.add(node.module.split('.')[0])
    return set(), top


def test_the_course_recipe_is_written_once():
    """compare, benchmark and the precision check take it from COURSE (the
    learner's checks try learning rates of their own, on purpose)."""
    skip = {'settings.py', 'problem_unittests.py'}
    sources = [p for p in ROOT.rglob('*.py') if '.venv' not in p.parts
               and 'tests' not in p.parts and p.name not in skip]
    for path in sources:
        text = path.read_text(encoding='utf-8')
        assert '0.0002' not in text and '2e-4' not in text, path
