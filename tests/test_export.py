"""The generated module must match the notebook's exercise cells."""
import ast
import json

import export


def test_module_is_in_sync_with_notebook():
    expected = export.exported_source()
    actual = export.MODULE.read_text(encoding='utf-8')
    assert actual == expected, (
        'dcgan.py differs from the notebook cells marked "#| export": '
        'run `python export.py` and commit both files.')


def test_every_exercise_is_exported():
    tree = ast.parse(export.exported_source())
    names = {node.name for node in tree.body
             if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    exercises = {'get_dataloader', 'scale', 'Discriminator', 'Generator',
                 'weights_init_normal', 'real_loss', 'fake_loss',
                 'build_optimizers', 'train_step', 'train'}
    assert exercises <= names, f'not exported: {sorted(exercises - names)}'


def test_unmarked_cells_are_left_out(tmp_path):
    notebook = tmp_path / 'nb.ipynb'
    cells = [{'cell_type': 'code', 'source': '#| export\nx = 1\n'},
             {'cell_type': 'code', 'source': 'y = 2\n'},
             {'cell_type': 'markdown', 'source': '#| export\nz = 3\n'}]
    notebook.write_text(json.dumps({'cells': cells}), encoding='utf-8')
    source = export.exported_source(notebook)
    assert 'x = 1' in source
    assert 'y = 2' not in source and 'z = 3' not in source
