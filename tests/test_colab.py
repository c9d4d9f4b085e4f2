"""The notebook's first code cell on a faked Colab: asks for the project as one
zip when its files are missing, works from the unpacked folder, says how to get
a GPU, and does nothing anywhere else."""

import io
import json
import os
import sys
import types
import zipfile

import pytest

import export


def colab_cell():
    cells = json.loads(export.NOTEBOOK.read_text(encoding='utf-8'))['cells']
    source = ''.join(
        next(c for c in cells if c['cell_type'] == 'code')['source']
    )
    assert 'google.colab' in source, (
        'the first code cell should be the Colab cell'
    )
    return source


def project_zip(names):
    """A zip laid out like GitHub's download: one top folder holding the
    files."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, 'w') as archive:
        for name in names:
            archive.writestr(f'facegen-main/{name}', '# stand-in\n')
    return buffer.getvalue()


@pytest.fixture
def fake_colab(monkeypatch):
    """google.colab in sys.modules; files.upload returns what the test puts
    in uploads."""
    uploads, calls = {}, []
    colab = types.ModuleType('google.colab')
    colab.files = types.SimpleNamespace(
        upload=lambda: calls.append(1) or uploads
    )
    google = types.ModuleType('google')
    google.colab = colab
    monkeypatch.setitem(sys.modules, 'google', google)
    monkeypatch.setitem(sys.modules, 'google.colab', colab)
    monkeypatch.setattr(sys, 'path', list(sys.path))
    return uploads, calls


def run_cell(folder, monkeypatch, cuda):
    monkeypatch.chdir(folder)
    monkeypatch.setattr('torch.cuda.is_available', lambda: cuda)
    exec(compile(colab_cell(), 'colab cell', 'exec'), {})


def test_the_uploaded_project_is_unpacked_and_used(
    fake_colab, tmp_path, monkeypatch, capsys
):
    uploads, calls = fake_colab
    uploads['facegen-main.zip'] = project_zip(
        ['helpers.py', 'metrics/__init__.py']
    )
    run_cell(tmp_path, monkeypatch, cuda=True)
    top = tmp_path / 'project' / 'facegen-main'
    assert calls == [1] and os.getcwd() == str(top)
    assert (
        sys.path[0] == str(top) and (top / 'metrics' / '__init__.py').exists()
    )
    out = capsys.readouterr().out
    assert 'Upload the project as one zip' in out and 'GPU' not in out


def test_a_zip_without_the_project_is_named(fake_colab, tmp_path, monkeypatch):
    uploads, _ = fake_colab
    uploads['photos.zip'] = project_zip(['face.jpg'])
    with pytest.raises(FileNotFoundError, match='no helpers.py'):
        run_cell(tmp_path, monkeypatch, cuda=True)


def test_nothing_is_asked_when_the_files_are_there(
    fake_colab, tmp_path, monkeypatch, capsys
):
    _, calls = fake_colab
    (tmp_path / 'helpers.py').write_text('')
    run_cell(tmp_path, monkeypatch, cuda=False)
    assert calls == []
    assert 'Runtime > Change runtime type > GPU' in capsys.readouterr().out


def test_outside_colab_the_cell_does_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.delitem(sys.modules, 'google.colab', raising=False)
    run_cell(tmp_path, monkeypatch, cuda=False)
    assert capsys.readouterr().out == ''
