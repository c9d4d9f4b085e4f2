"""Write what is generated from the solved notebook, or check it is in step.

The notebook is where the exercise code lives and is edited. From it come:
- dcgan.py: the code cells that start with `#| export`, for scripts and
  tests, so they import the same code instead of copying it;
- learner/dlnd_face_generation.ipynb: the same notebook, cell for cell,
  without outputs, each region between
  `### BEGIN SOLUTION` and `### END SOLUTION` (nbgrader's markers) replaced
  by a stub that says it is not written yet;
- with --learner-zip, the zip a learner is handed: that notebook and what it
  needs to run, and no solution;
- with --html, dlnd_face_generation.html, which reads offline (formulas as
  MathML, the explorer as a picture; facegen/html.py).

    python export.py                      # write dcgan.py and the learner's
    python export.py --check              # exit 1 when either is stale
    python export.py --learner-zip learner.zip
    python export.py --html
"""
import argparse
import copy
import json
import re
import sys
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / 'dlnd_face_generation.ipynb'
MODULE = HERE / 'dcgan.py'
HTML = HERE / 'dlnd_face_generation.html'
LEARNER = HERE / 'learner' / 'dlnd_face_generation.ipynb'
LEARNER_README = HERE / 'learner' / 'README.md'
MARK = '#| export'
BEGIN, END = '### BEGIN SOLUTION', '### END SOLUTION'
HEADER = (
    '# Generated from dlnd_face_generation.ipynb by export.py: do not edit.\n'
    '# Change the notebook cells that start with "#| export", then run\n'
    '# `python export.py`.\n'
)
STUB_COMMENT = '# Your code here: see the exercise text above.'
HELPERS_STUB = '# Helper functions of your own, if you want any, go here.'
# What a learner is handed besides the notebook: the tools it imports (never
# dcgan.py, the answers), the checks, and how to install and test.
LEARNER_FILES = ('helpers.py', 'problem_unittests.py', 'requirements.txt',
                 'conftest.py')
LEARNER_PACKAGE = 'facegen'
LEARNER_PYTEST_INI = """[pytest]
# `pytest` runs the notebook and compares every check with `Tests Passed`
# (quick mode: see conftest.py).
testpaths = dlnd_face_generation.ipynb
addopts = --nbval-lax --nbval-current-env --nbval-cell-timeout=900
"""


def _cells(notebook):
    return json.loads(Path(notebook).read_text(encoding='utf-8'))['cells']


def _source(cell):
    return ''.join(cell['source'])


def solution_regions(lines):
    """(begin, end) line indices of each marked region; raises ValueError
    for a region left open, an END without BEGIN, or nested regions."""
    regions, begin = [], None
    for index, line in enumerate(lines):
        if line.strip() == BEGIN:
            if begin is not None:
                raise ValueError(f'{BEGIN} inside another region: {line!r}')
            begin = index
        elif line.strip() == END:
            if begin is None:
                raise ValueError(f'{END} without {BEGIN}')
            regions.append((begin, index))
            begin = None
        elif BEGIN.split()[-1] in line and line.lstrip().startswith('###'):
            raise ValueError(f'Write the markers alone on a line: {line!r}')
    if begin is not None:
        raise ValueError(f'{BEGIN} without {END}')
    return regions


def _indent(line):
    return line[:len(line) - len(line.lstrip())]


def _enclosing_name(lines, index):
    """'Class.method' or 'function' that line index belongs to."""
    names, depth = [], len(_indent(lines[index]))
    for line in reversed(lines[:index]):
        match = re.match(r'(\s*)(?:def|class)\s+(\w+)', line)
        if match and len(match.group(1)) < depth:
            names.insert(0, match.group(2))
            depth = len(match.group(1))
    return '.'.join(names)


def _stub(lines, begin):
    """The lines that stand for the region starting at line begin."""
    indent = _indent(lines[begin])
    if not indent:  # helpers of the learner's own, at the top of a cell
        return [HELPERS_STUB]
    name = _enclosing_name(lines, begin)
    return [indent + STUB_COMMENT,
            f"{indent}raise NotImplementedError('{name} is not written yet')"]


def learner_source(source):
    """source with each marked region replaced by its stub."""
    lines = source.split('\n')
    out, last = [], 0
    for begin, end in solution_regions(lines):
        out += lines[last:begin] + _stub(lines, begin)
        last = end + 1
    return '\n'.join(out + lines[last:])


def solutions(source):
    """The solved lines of every region, as a list of lists."""
    lines = source.split('\n')
    return [lines[begin + 1:end] for begin, end in solution_regions(lines)]


def without_markers(source):
    """source with the marker lines removed (the solved code itself)."""
    return '\n'.join(line for line in source.split('\n')
                     if line.strip() not in (BEGIN, END))


def exported_source(notebook=NOTEBOOK):
    """dcgan.py's text: the marked code cells, in notebook order."""
    chunks = []
    for cell in _cells(notebook):
        lines = without_markers(_source(cell)).splitlines()
        if cell['cell_type'] == 'code' and lines and lines[0].strip() == MARK:
            chunks.append('\n'.join(lines[1:]).strip('\n'))
    if not chunks:
        raise ValueError(f'{notebook} has no code cell starting with {MARK!r}.')
    return HEADER + '\n\n\n'.join(chunks) + '\n'


def learner_notebook(notebook=NOTEBOOK):
    """The learner's notebook as a dict: every cell of notebook, code cells
    stubbed and without outputs."""
    solved = json.loads(Path(notebook).read_text(encoding='utf-8'))
    learner = copy.deepcopy(solved)
    learner['metadata'].pop('widgets', None)  # saved widget views
    for cell in learner['cells']:
        if cell['cell_type'] != 'code':
            continue
        source = learner_source(_source(cell))
        lines = source.split('\n')
        cell['source'] = [line + '\n' for line in lines[:-1]] + [lines[-1]]
        cell['execution_count'] = None
        cell['outputs'] = []
    return learner


def learner_text(notebook=NOTEBOOK):
    """The learner's notebook as the text of its file."""
    return json.dumps(learner_notebook(notebook), indent=1,
                      ensure_ascii=False) + '\n'


def learner_zip(path, notebook=NOTEBOOK):
    """Write the zip a learner is handed; returns the names in it."""
    names = {'dlnd_face_generation.ipynb': learner_text(notebook),
             'README.md': LEARNER_README.read_text(encoding='utf-8'),
             'pytest.ini': LEARNER_PYTEST_INI}
    for name in LEARNER_FILES:
        names[name] = (HERE / name).read_text(encoding='utf-8')
    for file in sorted((HERE / LEARNER_PACKAGE).rglob('*.py')):
        names[file.relative_to(HERE).as_posix()] = file.read_text('utf-8')
    with zipfile.ZipFile(path, 'w', zipfile.ZIP_DEFLATED) as archive:
        for name, text in sorted(names.items()):
            archive.writestr(f'facegen-learner/{name}', text)
    return sorted(names)


def _stale(target, text):
    """True when the file target does not hold text."""
    current = target.read_text(encoding='utf-8') if target.exists() else ''
    return current != text


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true',
                        help='only report whether the generated files are '
                             'up to date')
    parser.add_argument('--learner-zip', metavar='PATH',
                        help="write the learner's zip to PATH")
    parser.add_argument('--html', action='store_true',
                        help=f'write {HTML.name}, readable offline')
    args = parser.parse_args()
    targets = {MODULE: exported_source(), LEARNER: learner_text()}
    stale = [target for target, text in targets.items()
             if _stale(target, text)]
    if args.check:
        if stale:
            names = ' and '.join(t.relative_to(HERE).as_posix()
                                 for t in stale)
            sys.exit(f'{names} out of date with {NOTEBOOK.name}: run '
                     f'`python export.py`.')
        print('dcgan.py and the learner notebook are up to date.')
        return
    for target in stale:
        target.parent.mkdir(exist_ok=True)
        target.write_text(targets[target], encoding='utf-8')
        print(f'wrote {target.relative_to(HERE).as_posix()}')
    if not stale:
        print('dcgan.py and the learner notebook already up to date.')
    if args.learner_zip:
        names = learner_zip(args.learner_zip)
        print(f'wrote {args.learner_zip}: {len(names)} files')
    if args.html:
        from facegen.html import export_html  # needs nbconvert: only here
        export_html(NOTEBOOK, HTML)
        print(f'wrote {HTML.name}')


if __name__ == '__main__':
    main()
