"""The learner's notebook and zip: made from the solved notebook, in step
with it, holding no solution, and runnable where a learner unpacks them."""
import ast
import json
import os
import subprocess
import sys
import zipfile

import nbformat
import pytest
from nbclient import NotebookClient

import export

EXERCISES = ('FaceDataset', 'get_dataloader', 'scale', 'Discriminator',
             'Generator', 'weights_init_normal', 'real_loss', 'fake_loss',
             'build_optimizers', 'train_step')
GIVEN = ('build_networks', 'train_epoch', 'train')  # exported, not written


def cells(notebook):
    return json.loads(notebook.read_text(encoding='utf-8'))['cells']


def source(cell):
    return ''.join(cell['source'])


def test_learner_notebook_is_in_step_with_the_solved_one():
    assert export.LEARNER.read_text(encoding='utf-8') == \
        export.learner_text(), 'run python export.py'


def test_cell_for_cell_the_source_without_outputs():
    solved, learner = cells(export.NOTEBOOK), cells(export.LEARNER)
    assert [c['cell_type'] for c in solved] == \
        [c['cell_type'] for c in learner]
    for old, new in zip(solved, learner):
        if old['cell_type'] == 'markdown':
            assert source(old) == source(new)
            continue
        assert new['execution_count'] is None and new['outputs'] == []
        if export.BEGIN not in source(old):
            assert source(old) == source(new)


def test_solutions_pasted_into_the_stubs_give_the_solved_code():
    for old, new in zip(cells(export.NOTEBOOK), cells(export.LEARNER)):
        lines = source(new).split('\n')
        for solution in export.solutions(source(old)):
            stub = next(i for i, line in enumerate(lines)
                        if line.strip() in (export.STUB_COMMENT,
                                            export.HELPERS_STUB))
            width = 1 if lines[stub].strip() == export.HELPERS_STUB else 2
            lines[stub:stub + width] = solution
        assert '\n'.join(lines) == export.without_markers(source(old))


def test_every_exercise_has_a_marked_region_and_given_code_none():
    marked = set()
    for cell in cells(export.NOTEBOOK):
        lines = source(cell).split('\n')
        for begin, _ in export.solution_regions(lines):
            name = export._enclosing_name(lines, begin)
            if name:
                marked.add(name.split('.')[0])
    assert marked == set(EXERCISES)
    exported = export.exported_source()
    for name in GIVEN:
        assert f'def {name}(' in exported
    assert export.BEGIN not in exported and export.END not in exported


@pytest.mark.parametrize('text, problem', [
    (f'{export.BEGIN}\nx = 1\n', 'without'),
    (f'x = 1\n{export.END}\n', 'without'),
    (f'{export.BEGIN}\n{export.BEGIN}\n{export.END}\n', 'inside'),
    ('### BEGIN SOLUTION: say\n### END SOLUTION\n', 'alone'),
])
def test_badly_marked_regions_are_refused(text, problem):
    with pytest.raises(ValueError, match=problem):
        export.solution_regions(text.split('\n'))


def test_stubs_name_what_is_not_written_yet():
    learner = '\n'.join(source(c) for c in cells(export.LEARNER))
    for name in ('FaceDataset.__getitem__', 'get_dataloader',
                 'Discriminator.__init__', 'Generator.forward', 'train_step'):
        assert f"NotImplementedError('{name} is not written yet')" in learner


def hints():
    """What the exercise texts and the checks' messages tell a learner."""
    texts = [source(cell) for cell in cells(export.NOTEBOOK)
             if cell['cell_type'] == 'markdown']
    tree = ast.parse((export.HERE / 'problem_unittests.py').read_text('utf-8'))
    texts += [node.value for node in ast.walk(tree)
              if isinstance(node, ast.Constant) and isinstance(node.value, str)]
    return '\n'.join(texts)


def solved_lines():
    """Lines of the solutions long enough to identify them, other than
    single statements that the texts or the checks' hints give away."""
    text = hints()
    found = set()
    for cell in cells(export.NOTEBOOK):
        for solution in export.solutions(source(cell)):
            found.update(line.strip() for line in solution
                         if len(line.strip()) >= 20
                         and not line.strip().startswith(('#', '"""'))
                         and not line.strip().endswith(('(', '[', ','))
                         and line.strip() not in text)
    return found


@pytest.fixture(scope='module')
def learner_folder(tmp_path_factory):
    """The learner's zip, unpacked into an empty folder."""
    folder = tmp_path_factory.mktemp('learner')
    archive = folder / 'learner.zip'
    export.learner_zip(archive)
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    archive.unlink()
    return folder / 'facegen-learner'


def test_the_zip_holds_what_a_learner_needs(learner_folder):
    names = {p.relative_to(learner_folder).as_posix()
             for p in learner_folder.rglob('*') if p.is_file()}
    assert {'dlnd_face_generation.ipynb', 'helpers.py', 'problem_unittests.py',
            'requirements.txt', 'README.md', 'pytest.ini',
            'facegen/faces.py'} <= names
    assert 'dcgan.py' not in names
    assert not any(n.startswith('tests/') for n in names)


def test_no_solution_anywhere_in_the_zip(learner_folder):
    lines = solved_lines()
    assert len(lines) > 30
    for path in learner_folder.rglob('*'):
        if path.is_file():
            text = path.read_text(encoding='utf-8')
            leaked = sorted(line for line in lines if line in text)
            assert not leaked, f'{path.name} holds solved lines: {leaked[:3]}'


def run_notebook(folder, notebook):
    """Execute notebook in folder in quick mode; errors are kept as output."""
    nb = nbformat.read(folder / notebook, as_version=4)
    env = {'FACEGEN_QUICK': '1', 'MPLBACKEND': 'Agg'}
    old = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, allow_errors=True,
                       resources={'metadata': {'path': str(folder)}}).execute()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return nb


needs_data = pytest.mark.skipif(
    not os.environ.get('FACEGEN_DATA'),
    reason='runs the notebook: set FACEGEN_DATA to the course data')


@needs_data
def test_unwritten_exercises_say_so_at_their_checks(learner_folder):
    nb = run_notebook(learner_folder, 'dlnd_face_generation.ipynb')
    checks = [cell for cell in nb.cells if cell.cell_type == 'code'
              and cell.source.startswith('# NBVAL_CHECK_OUTPUT')]
    assert len(checks) == 8
    for cell in checks:
        errors = [out for out in cell.outputs if out.output_type == 'error']
        assert errors, cell.source
        assert errors[0].evalue.startswith('not written yet: '), (
            cell.source, errors[0].evalue)


@needs_data
def test_with_the_solutions_pasted_back_nbval_passes(learner_folder,
                                                     tmp_path):
    solved = nbformat.read(export.NOTEBOOK, as_version=4)
    learner = nbformat.read(learner_folder / 'dlnd_face_generation.ipynb',
                            as_version=4)
    for old, new in zip(solved.cells, learner.cells):
        if new.cell_type == 'code':
            new.source = export.without_markers(old.source)
    nbformat.write(learner, learner_folder / 'pasted.ipynb')
    done = subprocess.run(
        [sys.executable, '-m', 'pytest', '-p', 'no:cacheprovider', '-q',
         'pasted.ipynb'], cwd=learner_folder, capture_output=True, text=True,
        timeout=1200, env={**os.environ, 'FACEGEN_QUICK': '1',
                           'MPLBACKEND': 'Agg'})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]


def test_nbgrader_can_take_the_solved_notebook_as_it_is():
    """nbgrader clears only cells marked as solution cells: exactly the
    cells with solution regions carry that metadata."""
    for cell in cells(export.NOTEBOOK):
        marked = export.BEGIN in source(cell)
        meta = cell['metadata'].get('nbgrader', {})
        assert meta.get('solution', False) == marked, source(cell)[:80]
        if marked:
            assert meta['grade'] is False and meta['locked'] is False
    ids = [cell['metadata']['nbgrader']['grade_id']
           for cell in cells(export.NOTEBOOK)
           if 'nbgrader' in cell['metadata']]
    assert len(ids) == len(set(ids)) == 8
