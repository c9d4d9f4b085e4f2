"""train.py data-parallel: two gloo processes on the CPU (spawned once for
the whole file) train tiny faces through train.main, as torchrun would
start them. Every process holds the same weights after every step; the
result is that of one process doing both processes' work and averaging the
gradients; a resumed run equals an uninterrupted one."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp

import dcgan
import helpers
import train
from facegen.run import linear_decay
from test_train_script import assert_same_run

WORLD = 2
ARGS = ['--image-size', '16', '--conv-dim', '8', '--z-size', '8',
        '--batch-size', '32', '--epochs', '2', '--n-score', '16',
        '--sample-size', '4', '--precision', 'fp32', '--print-every', '100']
STEPS = 270 // 32  # 300 faces, 30 held out: 8 steps of 2 x 16 an epoch
RUNS = ('whole', 'interrupted', 'resumed')

# Tiny networks: one thread (tests/conftest.py).
pytestmark = pytest.mark.usefixtures('one_thread')


def free_port():
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def states(D, G):
    """Copies of the weights and buffers of D and G (bare modules)."""
    return {name: {key: value.detach().clone()
                   for key, value in net.state_dict().items()}
            for name, net in (('D', D), ('G', G))}


def recorder(real_step, record, stop_at=None):
    """dcgan.train_step, recording what each process saw and held: the
    random state it drew its noise from, its batch, and its weights
    before the first step and after every step. stop_at: the step on whose
    start to raise KeyboardInterrupt (in every process alike)."""
    def step(D, G, d_optimizer, g_optimizer, real_images, *args):
        if len(record['after']) + 1 == stop_at:
            raise KeyboardInterrupt
        if 'before' not in record:
            record['before'] = states(D.module, G.module)
        record['rng'].append(torch.get_rng_state())
        record['batches'].append(real_images.clone())  # (16, 3, 16, 16)
        losses = real_step(D, G, d_optimizer, g_optimizer, real_images,
                           *args)
        record['after'].append(states(D.module, G.module))
        return losses
    return step


def worker(rank, data, out, ports):
    """One of the processes, with the variables torchrun sets: the run
    recorded step by step, then the same run interrupted at the start of
    epoch 2 and run again."""
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR='127.0.0.1', WORLD_SIZE=str(WORLD),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    real_step = dcgan.train_step
    for name, port in zip(RUNS, ports):
        os.environ['MASTER_PORT'] = str(port)  # a fresh group per run
        record = {'rng': [], 'batches': [], 'after': []}
        dcgan.train_step = recorder(
            real_step, record, STEPS + 1 if name == 'interrupted' else None)
        try:
            train.main(['--data', str(data), '--out',
                        str(out / ('whole' if name == 'whole' else 'b')),
                        *ARGS])
        except KeyboardInterrupt:
            assert name == 'interrupted'
        torch.save(record, out / f'{name}-{rank}.pt')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    """Each run's records, per process, and its run folder."""
    from conftest import write_jpegs
    data = tmp_path_factory.mktemp('data') / 'faces'
    write_jpegs(data / 'celeba', 300, size=16)
    out = tmp_path_factory.mktemp('runs')
    mp.spawn(worker, args=(data, out, [free_port() for _ in RUNS]),
             nprocs=WORLD)
    return {name: [torch.load(out / f'{name}-{rank}.pt')
                   for rank in range(WORLD)] for name in RUNS}, out


def test_every_process_holds_the_same_weights_after_every_step(runs):
    records, _ = runs
    first, second = records['whole']
    assert len(first['after']) == len(second['after']) == 2 * STEPS
    for mine, theirs in zip(first['after'], second['after']):
        for net in ('D', 'G'):
            for name, value in mine[net].items():
                if 'running' in name or 'num_batches' in name:
                    continue  # batch-norm statistics: each process its own
                assert torch.equal(value, theirs[net][name]), (net, name)
    # Each process keeps the running statistics of its own share.
    last = (first['after'][-1]['G'], second['after'][-1]['G'])
    name = 'upsample.0.running_mean'
    assert not torch.equal(last[0][name], last[1][name])


def test_processes_share_out_each_epoch_and_draw_their_own_noise(runs):
    records, _ = runs
    first, second = records['whole']
    seen = {}  # (epoch, rank) -> the faces in order, (8 x 16, 3 x 16 x 16)
    for epoch in range(2):
        steps = slice(epoch * STEPS, (epoch + 1) * STEPS)
        for rank, record in enumerate((first, second)):
            seen[epoch, rank] = torch.cat(record['batches'][steps]).flatten(1)
        together = torch.cat([seen[epoch, 0], seen[epoch, 1]])
        assert len(together.unique(dim=0)) == 2 * STEPS * 16  # disjoint
    assert not torch.equal(seen[0, 0], seen[1, 0])  # reshuffled each epoch
    for step in (0, STEPS):  # each process, each epoch: its own noise
        assert not torch.equal(first['rng'][step], second['rng'][step])


def replica(record, config):
    """One process's networks and optimizers as they started."""
    D, G = dcgan.build_networks(config['z_size'], config['conv_dim'],
                                config['image_size'], 'cpu')
    D.load_state_dict(record['before']['D'])
    G.load_state_dict(record['before']['G'])
    d_opt, g_opt = dcgan.build_optimizers(
        D, G, config['lr'], (config['beta1'], config['beta2']))
    total = config['n_epochs'] * STEPS
    return D, G, d_opt, g_opt, [linear_decay(d_opt, total),
                                linear_decay(g_opt, total)]


def average_into(nets, losses):
    """Set every net's gradients to the mean over the nets of the
    gradient of its own loss: what DistributedDataParallel's all-reduce
    leaves in every process."""
    grads = [torch.autograd.grad(loss, list(net.parameters()))
             for net, loss in zip(nets, losses)]
    for net in nets:
        for param, *each in zip(net.parameters(), *grads):
            param.grad = sum(each) / len(each)


def test_equals_one_process_averaging_both_processes_gradients(runs):
    """The reference: one process holds a copy of D and G per process
    (the same weights, but each with its own batch-norm statistics), runs
    each copy on that process's batch and noise, with batch norm over that
    process's 16 images as in training mode, and steps every copy with the
    mean of their gradients, D first, then G through the updated D."""
    records, _ = runs
    config = train.make_config(train.parse_args(['--out', 'x', *ARGS]))
    copies = [replica(record, config) for record in records['whole']]
    Ds, Gs = [c[0] for c in copies], [c[1] for c in copies]
    for step in range(2 * STEPS):
        fakes, d_losses = [], []
        for record, D, G in zip(records['whole'], Ds, Gs):
            torch.set_rng_state(record['rng'][step])
            real = dcgan.scale(record['batches'][step])  # (16, 3, 16, 16)
            z = torch.randn(len(real), config['z_size'])  # (16, z_size)
            fakes.append(G(z))  # (16, 3, 16, 16)
            d_losses.append(dcgan.real_loss(D(real))
                            + dcgan.fake_loss(D(fakes[-1].detach())))
        average_into(Ds, d_losses)
        for D, _, d_opt, _, _ in copies:
            d_opt.step()
        g_losses = []
        for D, fake in zip(Ds, fakes):
            D.requires_grad_(False)
            g_losses.append(dcgan.real_loss(D(fake)))
            D.requires_grad_(True)
        average_into(Gs, g_losses)
        for _, _, _, g_opt, schedulers in copies:
            g_opt.step()
            for scheduler in schedulers:
                scheduler.step()
        for record, D, G in zip(records['whole'], Ds, Gs):
            for net, mine in (('D', D), ('G', G)):
                for name, value in mine.state_dict().items():
                    torch.testing.assert_close(
                        record['after'][step][net][name], value, rtol=1e-5,
                        atol=1e-6, msg=f'step {step + 1}, {net} {name}')


def test_resumed_run_equals_uninterrupted_run(runs):
    records, out = runs
    assert len(records['interrupted'][0]['after']) == STEPS
    assert len(records['resumed'][0]['after']) == STEPS  # epoch 2 only
    assert_same_run(helpers.load_checkpoint(out / 'b' / 'checkpoint.pt'),
                    helpers.load_checkpoint(out / 'whole' / 'checkpoint.pt'))
    # Every process's weights after the last step, not only the first's.
    for rank in range(WORLD):
        ends = [records[name][rank]['after'][-1] for name in
                ('whole', 'resumed')]
        for net in ('D', 'G'):
            for name, value in ends[0][net].items():
                if rank == 0 or 'running' not in name:
                    assert torch.equal(ends[1][net][name], value)


def test_only_the_first_process_writes_and_logs(runs):
    _, out = runs
    log = train.read_log(out / 'whole' / 'log.jsonl')
    assert [(r['epoch'], r['processes']) for r in log] == [(1, 2), (2, 2)]
    assert len(train.read_log(out / 'b' / 'log.jsonl')) == 2
    G, info = helpers.load_generator(out / 'whole' / 'generator.pt',
                                     dcgan.Generator)
    assert info['config'] == dict(z_size=8, conv_dim=8, image_size=16)
    whole = helpers.load_checkpoint(out / 'whole' / 'checkpoint.pt')
    # The checkpoint's losses are the means over both processes' shares.
    assert len(whole['losses']['D']) == 2 * STEPS
