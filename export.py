"""Write dcgan.py from the notebook cells that start with the line `#| export`.

The notebook is where the exercise code lives and is edited; scripts and tests
import the same code from the generated module instead of copying it.

    python export.py           # regenerate dcgan.py
    python export.py --check   # exit 1 when dcgan.py is out of date
"""
import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / 'dlnd_face_generation.ipynb'
MODULE = HERE / 'dcgan.py'
MARK = '#| export'
HEADER = (
    '# Generated from dlnd_face_generation.ipynb by export.py: do not edit.\n'
    '# Change the notebook cells that start with "#| export", then run\n'
    '# `python export.py`.\n'
)


def exported_source(notebook=NOTEBOOK):
    """The module text: the marked code cells, in notebook order."""
    cells = json.loads(Path(notebook).read_text(encoding='utf-8'))['cells']
    chunks = []
    for cell in cells:
        lines = ''.join(cell['source']).splitlines()
        if cell['cell_type'] == 'code' and lines and lines[0].strip() == MARK:
            chunks.append('\n'.join(lines[1:]).strip('\n'))
    if not chunks:
        raise ValueError(f'{notebook} has no code cell starting with {MARK!r}.')
    return HEADER + '\n\n\n'.join(chunks) + '\n'


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--check', action='store_true',
                        help='only report whether dcgan.py is up to date')
    args = parser.parse_args()
    source = exported_source()
    current = MODULE.read_text(encoding='utf-8') if MODULE.exists() else ''
    if args.check:
        if source != current:
            sys.exit(f'{MODULE.name} is out of date with {NOTEBOOK.name}: '
                     'run `python export.py`.')
        print(f'{MODULE.name} is up to date.')
    elif source != current:
        MODULE.write_text(source, encoding='utf-8')
        print(f'wrote {MODULE.name}')
    else:
        print(f'{MODULE.name} already up to date.')


if __name__ == '__main__':
    main()
