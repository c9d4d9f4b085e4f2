"""train.py in one process: the notebook's defaults, the notebook's
training (the same checkpoint, resumed by either), the files it writes,
its messages, and evaluate.py on its generator."""

import json
import os
import shutil
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
import torch

import dcgan
import helpers
import train
from conftest import TINY, notebook_cells, write_jpegs
from facegen import report

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = ['--epochs', '2']
ONE_THREAD = {'OMP_NUM_THREADS': '1'}  # for the commands run below
COMPARED = ('D', 'G', 'opt_D', 'opt_G', 'lr_D', 'lr_G', 'losses', 'samples',
            'scores', 'fixed_z', 'rng', 'config', 'epoch')

# Tiny networks: one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.fixture(scope='module', autouse=True)
def no_gpu():
    """train.py on the CPU too, where a GPU is present: the runs compared
    below must match to the last bit, and notebook_run trains on the CPU
    (GPU kernels are not bit-for-bit repeatable by default anyway)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.cuda, 'is_available', lambda: False)
        yield


@pytest.fixture(scope='module')
def faces(tmp_path_factory):
    """300 small faces laid out like the course data (270 train, 30 held
    out)."""
    root = tmp_path_factory.mktemp('data') / 'faces'
    write_jpegs(root / 'celeba', 300, size=16)
    return root


def run_script(faces, out, *extra):
    """train.py's main in this process, on the tiny faces."""
    return train.main(['--data', str(faces), '--out', str(out), *TINY,
                       *extra])


@pytest.fixture(scope='module')
def uninterrupted(faces, tmp_path_factory):
    """The checkpoint of a two-epoch train.py run."""
    out = tmp_path_factory.mktemp('uninterrupted')
    run_script(faces, out, *EPOCHS)
    return helpers.load_checkpoint(out / 'checkpoint.pt')


def config_of(*extra):
    return train.make_config(train.parse_args(['--out', 'x', *TINY,
                                               *extra]))


def interrupting(step, batches=8):
    """step, made to raise KeyboardInterrupt on its call for epoch 2's first
    batch (270 training faces, batches of 32: 8 a epoch)."""
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == batches + 1:
            raise KeyboardInterrupt
        return step(*args, **kwargs)

    return interrupted


def interrupt_epoch_2(monkeypatch):
    """Make dcgan.train_step, which train.py calls, stop in epoch 2
    (interrupting); returns the real one."""
    real_step = dcgan.train_step
    monkeypatch.setattr(dcgan, 'train_step', interrupting(real_step))
    return real_step


def assert_same(a, b, where=''):
    """a and b hold the same values, to the last bit: nested dicts, lists
    and tuples of tensors and plain values."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f'{where}/{key}')
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f'{where}[{i}]')
    elif isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


def assert_same_run(state, expected):
    """Two checkpoints hold the same run (their timings aside)."""
    for key in COMPARED:
        assert_same(state[key], expected[key], key)


# --- the notebook's settings and training ------------------------------------

def notebook_code_cells():
    """The sources of the notebook's code cells, IPython's magic lines left
    out, and the index of the parameters cell (tagged for papermill) among
    them."""
    code = notebook_cells('code')
    tagged = [index for index, cell in enumerate(code)
              if 'parameters' in cell['metadata'].get('tags', [])]
    assert len(tagged) == 1, 'the notebook has one parameters cell'
    sources = ['\n'.join(line for line in ''.join(cell['source']).splitlines()
                         if not line.lstrip().startswith('%'))
               for cell in code]
    return sources, tagged[0]


def notebook_config(injected=''):
    """config as the notebook builds it, with injected run after the
    parameters cell, where papermill puts its -p values."""
    namespace = {'helpers': helpers}
    sources, parameters = notebook_code_cells()
    for source in (sources[parameters], injected, sources[parameters + 1]):
        exec(source, namespace)
    return namespace['config']


@pytest.mark.parametrize('quick', ['0', '1'])
def test_defaults_are_the_notebooks_parameters(quick, monkeypatch):
    monkeypatch.setenv('FACEGEN_QUICK', quick)
    config = train.make_config(train.parse_args(['--out', 'x']))
    notebook = notebook_config()
    assert config == notebook
    assert list(config) == list(notebook)  # and in its order


def test_papermill_values_reach_the_config():
    config = notebook_config('seed = 7\nn_epochs = 3\nlr = 0.001\n')
    assert (config['seed'], config['n_epochs'], config['lr']) == (7, 3, 0.001)
    with pytest.raises(ValueError, match='lr must be'):
        notebook_config('lr = 2\n')


def notebook_run(data_dir, config, run_dir, monkeypatch, interrupt=False):
    """The notebook's own code cells, up to its training cell, on the faces
    in data_dir, with config's settings and run_dir put after the parameters
    cell, as papermill puts its values. interrupt: its train_step stops in
    epoch 2 (interrupting). Returns the config the cells built."""
    monkeypatch.setenv('FACEGEN_DATA', str(data_dir))
    monkeypatch.chdir(run_dir)  # what the cells write stays there
    injected = ''.join(f'{key} = {value!r}\n' for key, value in config.items()
                       if key != 'quick')
    injected += f"run_dir = {str(run_dir)!r}\nassets_dir = 'assets'\n"
    sources, parameters = notebook_code_cells()
    sources.insert(parameters + 1, injected)
    namespace = {}
    for source in sources:
        training = 'G_kept = train(' in source
        if training and interrupt:  # after the check, which calls it too
            namespace['train_step'] = interrupting(namespace['train_step'])
        exec(compile(source, 'dlnd_face_generation.ipynb', 'exec'), namespace)
        if training:
            return namespace['config']
    raise AssertionError('the notebook has no training cell')


def test_train_py_trains_what_the_notebook_trains(faces, uninterrupted,
                                                  tmp_path, monkeypatch):
    """Not a copy of its order: the notebook's cells themselves."""
    config = config_of(*EPOCHS)
    assert notebook_run(faces, config, tmp_path, monkeypatch) == config
    assert_same_run(helpers.load_checkpoint(tmp_path / 'checkpoint.pt'),
                    uninterrupted)


def test_the_notebook_goes_on_from_a_train_py_checkpoint(
        faces, uninterrupted, tmp_path, monkeypatch, capsys):
    real_step = interrupt_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_script(faces, tmp_path, *EPOCHS)
    assert ('Interrupted in epoch 2: ' in capsys.readouterr().out)
    monkeypatch.setattr(dcgan, 'train_step', real_step)
    notebook_run(faces, config_of(*EPOCHS), tmp_path, monkeypatch)
    assert 'Resuming from' in capsys.readouterr().out
    assert_same_run(helpers.load_checkpoint(tmp_path / 'checkpoint.pt'),
                    uninterrupted)


def test_train_py_goes_on_from_a_notebook_checkpoint(
        faces, uninterrupted, tmp_path, monkeypatch, capsys):
    with pytest.raises(KeyboardInterrupt):
        notebook_run(faces, config_of(*EPOCHS), tmp_path, monkeypatch,
                     interrupt=True)
    run_script(faces, tmp_path, *EPOCHS)
    out = capsys.readouterr().out
    assert 'Resuming from' in out and '1 of 2 epochs done' in out
    assert_same_run(helpers.load_checkpoint(tmp_path / 'checkpoint.pt'),
                    uninterrupted)
    # The notebook wrote no log line for epoch 1; train.py wrote epoch 2's.
    log = train.read_log(tmp_path / 'log.jsonl')
    assert [record['epoch'] for record in log] == [2]


class Shifted:
    """Processes stand-in whose 'mean' adds 1: shows where it is applied."""

    @staticmethod
    def mean(*values):
        return tuple(value + 1 for value in values)


def test_train_py_steps_are_the_learners_with_losses_averaged(faces):
    """train.py trains with dcgan.train_epoch; its step is the learner's
    train_step, the losses averaged over the processes (procs.mean)."""
    config = config_of()
    results = []
    for step in (None, train.averaged_step(Shifted())):
        torch.manual_seed(0)
        loader = dcgan.get_dataloader(32, 16, faces)
        D, G = dcgan.build_networks(8, 8, 16, 'cpu')
        d_opt, g_opt = dcgan.build_optimizers(D, G, 1e-3, (0.5, 0.999))
        losses = dcgan.train_epoch(D, G, d_opt, g_opt, loader, config, 'cpu',
                                   step=step)
        results.append((losses, G.state_dict(), D.state_dict()))
    ((d_losses, g_losses), *states), (losses_here, *states_here) = results
    assert losses_here == ([loss + 1 for loss in d_losses],
                           [loss + 1 for loss in g_losses])
    for state, state_here in zip(states, states_here):
        for name, value in state.items():
            assert torch.equal(state_here[name], value), name


# --- the run folder -----------------------------------------------------------

def test_run_folder_log_and_generator(faces, tmp_path):
    out = tmp_path / 'run'
    published = run_script(faces, out, '--epochs', '1')
    assert published == out / 'generator.pt'
    assert (out / 'samples' / 'epoch_001.png').is_file()
    (record,) = train.read_log(out / 'log.jsonl')
    state = helpers.load_checkpoint(out / 'checkpoint.pt')
    losses = state['losses']
    assert record['epoch'] == 1 and record['processes'] == 1
    assert record['d_loss'] == pytest.approx(sum(losses['D'][:8]) / 8)
    assert record['g_loss'] == pytest.approx(sum(losses['G'][:8]) / 8)
    # 8 batches of 32 in the logged seconds, which are rounded to the
    # millisecond: on a fast CPU a tiny epoch takes a few of them
    seconds = record['seconds']
    assert (8 * 32 / (seconds + 5e-4) - 0.05 <= record['images_per_second']
            <= 8 * 32 / (seconds - 5e-4) + 0.05)
    assert record['score'] > 0
    G, info = helpers.load_generator(published, dcgan.Generator)
    assert info['config'] == dict(z_size=8, conv_dim=8, image_size=16)
    score = info['score']  # the notebook's full report, on 16 faces
    assert score['n'] == 16 and score['swd'] > 0 and score['floor'] > 0
    assert score['swd_over_floor'] == pytest.approx(
        score['swd'] / score['floor'])
    assert score['memorisation'] > 0
    assert (out / 'generated_faces.png').is_file()
    figures = json.loads((out / 'run.json').read_text('utf-8'))
    assert figures['config'] == config_of('--epochs', '1')
    assert figures['command'].startswith('train.py --data ')
    assert figures['processes'] == 1 and figures['threads'] == 1
    assert figures['epoch_scores'] == [round(record['score'], 2)]
    assert figures['epoch_seconds'] == [round(state['seconds'][0], 1)]
    assert figures['wall_seconds'] >= figures['train_seconds']
    assert figures['score'] == {key: round(value, 2) for key, value
                                in score.items()}
    assert (f"| 16×16, conv_dim 8, lr {train.NOTEBOOK['lr']:g} falling to "
            f"0, seed {figures['config']['seed']}, average of G "
            f"({train.NOTEBOOK['ema_decay']:g}) |"
            ) in report.runs_table([figures])
    # Batch norm re-estimated for the final weights; the checkpoint keeps
    # the statistics training left.
    trained = state['G']
    name = 'upsample.0.running_mean'
    assert not torch.equal(G.state_dict()[name], trained[name])
    # The published weights are the average of G's, not G's last ones.
    average = state['G_average']['module.project.weight']
    assert torch.equal(G.state_dict()['project.weight'], average)
    assert not torch.equal(average, trained['project.weight'])


def test_rerun_goes_on_and_changed_settings_are_refused(faces, tmp_path,
                                                        capsys):
    run_script(faces, tmp_path, '--epochs', '1', '--no-lr-decay')
    printed = capsys.readouterr().out
    # Not a terminal: plain progress lines every --print-every batches.
    assert 'epoch 1/1, batch 1/8: D loss' in printed
    assert 'epoch 1/1, batch 5/8: D loss' in printed
    run_script(faces, tmp_path, '--epochs', '2', '--no-lr-decay')
    assert '1 of 2 epochs done' in capsys.readouterr().out
    log = train.read_log(tmp_path / 'log.jsonl')
    assert [record['epoch'] for record in log] == [1, 2]
    figures = json.loads((tmp_path / 'run.json').read_text('utf-8'))
    assert len(figures['epoch_seconds']) == 2  # both commands' epochs ...
    assert figures['wall_seconds'] is None  # ... but only the last's time
    with pytest.raises(ValueError, match=r'lr 0\.0.* there, 0\.01 here.*'
                                         r'pass another --out'):
        run_script(faces, tmp_path, '--epochs', '2', '--no-lr-decay',
                   '--lr', '0.01')


def test_interrupt_says_to_run_the_command_again(faces, tmp_path,
                                                 monkeypatch, capsys):
    interrupt_epoch_2(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        run_script(faces, tmp_path, *EPOCHS)
    assert ('holds epoch 1. Run the same command again to go on'
            in capsys.readouterr().out)


def test_stale_log_lines_go_with_their_checkpoint(faces, tmp_path):
    (tmp_path / 'log.jsonl').write_text(
        '{"epoch": 1, "processes": 3}\n{"epoch": 2, "processes": 3}\n{"ep')
    run_script(faces, tmp_path, '--epochs', '1')
    (record,) = train.read_log(tmp_path / 'log.jsonl')
    assert record['processes'] == 1  # this run's line only


# --- settings and messages ----------------------------------------------------

@pytest.mark.parametrize('args, message', [
    (['--image-size', '8'], r'--image-size must be .* at least 16.*got 8'),
    (['--image-size', '48'], r'image_size must be a power of two'),
    (['--batch-size', '0'], r'batch_size must be a whole number'),
    (['--lr', '2'], r'lr must be between 0 and 1'),
    (['--ema-decay', '1'], r'ema_decay must be None .* between 0 and 1'),
])
def test_impossible_settings_are_named(args, message):
    with pytest.raises(ValueError, match=message):
        config_of(*args)


def test_batch_larger_than_the_data_is_refused(faces, tmp_path):
    with pytest.raises(ValueError, match=r'--batch-size 512 is larger than '
                                         r'the 270 training images'):
        run_script(faces, tmp_path, '--batch-size', '512')


def test_batch_must_split_evenly_across_processes():
    assert train.local_batch_size(128, 2) == 64
    with pytest.raises(ValueError, match=r'--batch-size 100 cannot be split '
                                         r'evenly across 3 .* 99 or 102'):
        train.local_batch_size(100, 3)
    with pytest.raises(ValueError, match=r'multiple of 4, e\.g\. 4\.'):
        train.local_batch_size(2, 4)


def test_the_weight_average_can_be_changed_or_left_out():
    assert config_of()['ema_decay'] == train.NOTEBOOK['ema_decay']
    assert config_of('--ema-decay', '0.99')['ema_decay'] == 0.99
    assert config_of('--no-ema')['ema_decay'] is None


def test_sync_bn_is_a_setting_of_the_run():
    """A run with --sync-bn records it, so going on without it (or the
    other way round) is refused like any other changed setting; without
    it the config keeps the notebook's keys."""
    assert config_of('--sync-bn')['sync_bn'] is True
    assert 'sync_bn' not in config_of()


def test_sync_bn_is_refused_on_cpus_before_anything_else():
    args = train.parse_args(['--out', 'x', '--sync-bn', *TINY])
    with pytest.raises(ValueError, match=r'--sync-bn needs GPUs'):
        train.train(args, train.make_config(args), train.Processes(world=2))


@pytest.mark.parametrize('gpus', [0, 1])
def test_processes_wait_long_enough_for_the_final_score(gpus, monkeypatch):
    """While the first process scores the run, the others wait at a
    barrier: the group's timeout must outlast that on gloo and NCCL alike
    (NCCL's default is 10 minutes)."""
    started = {}
    monkeypatch.setenv('WORLD_SIZE', '2')
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, 'device_count', lambda: gpus)
    monkeypatch.setattr(torch.cuda, 'set_device', lambda device: None)
    monkeypatch.setattr(train.dist, 'is_initialized', lambda: False)
    monkeypatch.setattr(train.dist, 'init_process_group',
                        lambda backend, **options: started.update(
                            backend=backend, **options))
    monkeypatch.setattr(train.dist, 'get_rank', lambda: 0)
    monkeypatch.setattr(train.dist, 'get_world_size', lambda: 2)
    monkeypatch.setattr(train.dist, 'destroy_process_group', lambda: None)
    with train.processes() as procs:
        assert procs.world == 2
    assert started['backend'] == ('nccl' if gpus else 'gloo')
    assert started['timeout'] >= timedelta(minutes=30)


def test_every_process_and_epoch_draws_other_noise():
    seeds = {train.rank_seed(42, rank, epoch)
             for rank in range(4) for epoch in range(1, 16)}
    assert len(seeds) == 4 * 15
    assert train.rank_seed(42, 1, 3) == train.rank_seed(42, 1, 3)
    assert train.rank_seed(42, 1, 3) < 2 ** 64  # torch.manual_seed's range


# --- the command line, and evaluate.py on what it wrote ----------------------

def test_command_line_from_a_zip_then_evaluate(faces, tmp_path):
    archive = shutil.make_archive(str(tmp_path / 'faces'), 'zip',
                                  faces.parent, faces.name)
    data_dir, out = tmp_path / 'extracted', tmp_path / 'run'
    command = [sys.executable, 'train.py', '--data', archive, '--data-dir',
               str(data_dir), '--out', str(out), '--epochs', '1',
               '--n-images', '64', *TINY[:6], '--batch-size', '16',
               '--n-score', '16']
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          timeout=300, env={**os.environ, **ONE_THREAD})
    assert done.returncode == 0, done.stdout + done.stderr
    assert 'extracted from faces.zip' in done.stdout
    assert 'epoch 1/1: ' in done.stdout and f'Saved {out}' in done.stdout
    assert '\r' not in done.stderr  # no progress bar outside a terminal
    evaluated = subprocess.run(
        [sys.executable, 'evaluate.py', '--weights', str(out / 'generator.pt'),
         '--real', str(data_dir), '--split', 'all', '--n', '16'],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, **ONE_THREAD})
    assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
    assert 'SWD ' in evaluated.stdout and 'for 16 generated' in evaluated.stdout

    again = subprocess.run(command + ['--lr', '0.01'], cwd=ROOT,
                           capture_output=True, text=True, timeout=300,
                           env={**os.environ, **ONE_THREAD})
    assert again.returncode == 1
    assert again.stderr.startswith('train.py: ') and 'lr ' in again.stderr
