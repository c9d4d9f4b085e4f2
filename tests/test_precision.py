"""Tests for helpers.choose_precision and the CPU facts it relies on, and
for helpers.output_layer_in_fp32.

The timing is replaced by fakes wherever the decision is tested, so the
outcome does not depend on this machine's CPU or load; one test runs the real
(small) measurement.
"""

import copy
import warnings

import pytest
import torch
from torch import nn

import dcgan
import helpers
from facegen import runtime

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: Made-up CPU 9000
flags\t\t: fpu sse avx2 avx512f avx512_bf16
"""


def fail_if_called(*args, **kwargs):
    raise AssertionError('this should not have been called')


def fake_timing(fp32_seconds, bf16_seconds):
    """A stand-in for _time_conv_workload that reports fixed times per dtype."""

    def timing(dtype, *args, **kwargs):
        return bf16_seconds if dtype == torch.bfloat16 else fp32_seconds

    return timing


@pytest.fixture
def cpu_with_bf16(monkeypatch):
    monkeypatch.setattr(runtime, '_cpu_flags', lambda: {'avx2', 'avx512_bf16'})


@pytest.fixture
def cpu_without_bf16(monkeypatch):
    monkeypatch.setattr(runtime, '_cpu_flags', lambda: {'avx2', 'avx512f'})


@pytest.fixture
def cudnn_benchmark_restored(monkeypatch):
    """Let a test change cudnn.benchmark; it is put back afterwards."""
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', False)


def test_fp32_is_none_without_measuring(monkeypatch, cpu_with_bf16, capsys):
    monkeypatch.setattr(runtime, '_time_conv_workload', fail_if_called)
    assert helpers.choose_precision('cpu', 'fp32') is None
    assert capsys.readouterr().out == 'Precision: fp32 (as requested)\n'


def test_bf16_on_a_bf16_cpu(monkeypatch, cpu_with_bf16, capsys):
    monkeypatch.setattr(runtime, '_time_conv_workload', fail_if_called)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        assert (
            helpers.choose_precision(torch.device('cpu'), 'bf16')
            is torch.bfloat16
        )
    assert 'Precision: bf16 autocast' in capsys.readouterr().out


def test_bf16_on_a_cpu_without_it_warns(cpu_without_bf16):
    with pytest.warns(UserWarning, match='emulated and will be slower'):
        assert helpers.choose_precision('cpu', 'bf16') is torch.bfloat16


@pytest.mark.parametrize('bad', ['fp16', 'BF16', '', None])
def test_unknown_precision_lists_the_choices(bad):
    with pytest.raises(ValueError, match="'auto', 'fp32', 'bf16'"):
        helpers.choose_precision('cpu', bad)


def test_auto_on_a_cpu_without_bf16_does_not_measure(
    monkeypatch, cpu_without_bf16, capsys
):
    monkeypatch.setattr(runtime, '_time_conv_workload', fail_if_called)
    assert helpers.choose_precision('cpu') is None
    assert (
        'Precision: fp32 (this CPU has no native bf16'
        in capsys.readouterr().out
    )


@pytest.mark.parametrize('flag', ['avx512_bf16', 'amx_bf16'])
def test_auto_picks_bf16_when_it_measures_faster(monkeypatch, flag, capsys):
    monkeypatch.setattr(runtime, '_cpu_flags', lambda: {'avx2', flag})
    monkeypatch.setattr(runtime, '_time_conv_workload', fake_timing(1.0, 0.5))
    assert helpers.choose_precision('cpu') is torch.bfloat16
    assert 'bf16 autocast (2.0x faster than fp32' in capsys.readouterr().out


@pytest.mark.parametrize('bf16_seconds', [0.95, 1.3])  # 1.05x faster; slower
def test_auto_keeps_fp32_when_bf16_is_not_clearly_faster(
    monkeypatch, cpu_with_bf16, bf16_seconds, capsys
):
    monkeypatch.setattr(
        runtime, '_time_conv_workload', fake_timing(1.0, bf16_seconds)
    )
    assert helpers.choose_precision('cpu') is None
    assert 'Precision: fp32 (bf16 was only' in capsys.readouterr().out


def test_auto_alternates_the_formats_so_a_slow_spell_does_not_decide(
    monkeypatch, cpu_with_bf16
):
    """bf16 is 2x faster, but the CPU slows down 3x for three passes in a row:
    timed one format after the other, that spell would fall on bf16's passes
    only."""
    calls = []

    def timing(dtype, *args, **kwargs):
        calls.append(dtype)
        slow = 3.0 if 3 <= len(calls) <= 5 else 1.0
        return (0.5 if dtype == torch.bfloat16 else 1.0) * slow

    monkeypatch.setattr(runtime, '_time_conv_workload', timing)
    assert runtime._auto_cpu_precision()[1].startswith('2.0x faster')
    assert calls == [torch.float32, torch.bfloat16] * runtime._PRECISION_ROUNDS


def test_auto_on_an_ampere_gpu(monkeypatch, cudnn_benchmark_restored):
    monkeypatch.setattr(
        torch.cuda, 'get_device_capability', lambda device=None: (8, 0)
    )
    monkeypatch.setattr(
        torch.cuda, 'is_bf16_supported', lambda *args, **kwargs: True
    )
    monkeypatch.setattr(
        torch.cuda, 'get_device_name', lambda device=None: 'Fake A100'
    )
    assert helpers.choose_precision('cuda') is torch.bfloat16
    assert torch.backends.cudnn.benchmark is True


def test_auto_on_an_older_gpu(monkeypatch, cudnn_benchmark_restored, capsys):
    monkeypatch.setattr(
        torch.cuda, 'get_device_capability', lambda device=None: (7, 5)
    )
    monkeypatch.setattr(
        torch.cuda, 'is_bf16_supported', lambda *args, **kwargs: True
    )
    monkeypatch.setattr(
        torch.cuda, 'get_device_name', lambda device=None: 'Fake T4'
    )
    assert helpers.choose_precision('cuda') is None
    assert 'Fake T4 is older than Ampere' in capsys.readouterr().out
    assert torch.backends.cudnn.benchmark is True


def test_real_measurement_is_quick_and_leaves_the_seed_alone():
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    for dtype in (torch.float32, torch.bfloat16):
        seconds = runtime._time_conv_workload(dtype, batch_size=8, repeats=1)
        assert 0 < seconds < 5
    # the seeded stream did not move
    assert torch.equal(torch.rand(3), expected)


def test_cpuinfo_is_read(tmp_path, monkeypatch):
    fake = tmp_path / 'cpuinfo'
    fake.write_text(CPUINFO)
    monkeypatch.setattr(runtime, '_CPUINFO', str(fake))
    assert helpers.cpu_name() == 'Made-up CPU 9000'
    assert runtime._cpu_flags() == {
        'fpu',
        'sse',
        'avx2',
        'avx512f',
        'avx512_bf16',
    }


def test_without_cpuinfo(tmp_path, monkeypatch):
    monkeypatch.setattr(runtime, '_CPUINFO', str(tmp_path / 'missing'))
    monkeypatch.setattr(runtime.platform, 'processor', lambda: '')
    assert runtime._cpu_flags() == set()
    assert helpers.cpu_name() == 'unknown CPU'


def layer_dtypes(net):
    """Record the output dtype of every conv and linear layer of net when it
    runs, in order (under bf16 autocast: bfloat16 where the layer computed
    in bf16); returns the list it fills."""
    seen = []
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            module.register_forward_hook(
                lambda m, inputs, out: seen.append(out.dtype))
    return seen


class LearnerGenerator(nn.Module):
    """A generator written another way: no Sequential, a bias-free
    transposed conv, then a 1x1 conv that makes the 3 channels."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 16 * 4 * 4)
        self.up = nn.ConvTranspose2d(16, 8, 4, 2, 1, bias=False)
        self.to_rgb = nn.Conv2d(8, 3, 1)

    def forward(self, z):
        x = self.fc(z).view(-1, 16, 4, 4)
        return torch.tanh(self.to_rgb(torch.relu(self.up(x))))


def small_generator():
    torch.manual_seed(0)
    return dcgan.build_networks(8, 8, 16, 'cpu')[1]


@pytest.mark.parametrize('make', [small_generator, LearnerGenerator])
def test_the_output_layer_computes_in_fp32_under_bf16_autocast(make):
    G = make()
    if make is LearnerGenerator:
        helpers.output_layer_in_fp32(G)
    seen = layer_dtypes(G)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        images = G(torch.randn(4, 8))
        assert torch.is_autocast_enabled('cpu')  # the layers after it
    assert images.dtype == torch.float32
    assert seen[-1] == torch.float32
    assert set(seen[:-1]) == {torch.bfloat16}, seen


def test_fp32_runs_are_unchanged_to_the_bit():
    G = small_generator()  # build_networks applied it
    plain = LearnerGenerator()
    z = torch.randn(4, 8)
    expected = (G(z), plain(z))
    helpers.output_layer_in_fp32(plain)
    assert torch.equal(G(z), expected[0])
    assert torch.equal(plain(z), expected[1])


def test_gradients_reach_every_layer_in_fp32():
    G = small_generator()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        loss = G(torch.randn(4, 8)).square().mean()
    loss.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32
               and torch.isfinite(p.grad).all() for p in G.parameters())


def test_autocast_is_back_on_after_a_failed_forward():
    G = small_generator()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        with pytest.raises(RuntimeError):
            G.upsample[-2](torch.randn(2, 5, 4, 4))  # 5 channels, not 8
        assert torch.is_autocast_enabled('cpu')
        assert G(torch.randn(2, 8)).dtype == torch.float32  # works again


def test_a_copy_of_G_computes_with_its_own_weights():
    """The weight average is a deep copy of G: its output layer must run
    in fp32 too, and with the copy's weights, not G's."""
    G = small_generator()
    average = copy.deepcopy(G)
    with torch.no_grad():
        for p in average.parameters():
            p.mul_(0.5)
    z = torch.randn(4, 8)
    seen = layer_dtypes(average)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert not torch.allclose(average(z), G(z))
    assert seen[-1] == torch.float32


def test_a_network_without_layers_to_keep_is_refused():
    with pytest.raises(ValueError, match='Tanh has no convolution or linear'):
        helpers.output_layer_in_fp32(nn.Tanh())


def test_print_names_the_float32_layer_and_the_weights_keep_their_names():
    G = small_generator()
    assert 'Float32ConvTranspose2d(8, 3,' in repr(G)
    plain = dcgan.Generator(8, 8, 16)
    assert list(G.state_dict()) == list(plain.state_dict())
    G.load_state_dict(plain.state_dict())  # a saved generator loads as before
    assert isinstance(G.upsample[-2], nn.ConvTranspose2d)  # weights_init


def test_applying_it_twice_changes_nothing_more():
    G = small_generator()
    before = type(G.upsample[-2])
    helpers.output_layer_in_fp32(G)
    assert type(G.upsample[-2]) is before


class PlusOneConv(nn.Conv2d):
    """A learner's own convolution class, with its own forward."""

    def forward(self, x):
        return super().forward(x) + 1


def test_a_layer_of_its_own_class_keeps_its_forward():
    G = nn.Sequential(nn.ConvTranspose2d(4, 4, 4, 2, 1), PlusOneConv(4, 3, 1))
    x = torch.randn(2, 4, 4, 4)
    expected = G(x)
    helpers.output_layer_in_fp32(G)
    assert type(G[1]).__name__ == 'Float32PlusOneConv'
    other = nn.Sequential(PlusOneConv(4, 3, 1))
    helpers.output_layer_in_fp32(other)
    assert type(other[0]) is type(G[1])  # one class, not one per network
    assert torch.equal(G(x), expected)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = G(x)
    assert out.dtype == torch.float32
    assert torch.allclose(out, expected, atol=0.1)  # bf16 first layer


def test_torch_compile_traces_it_in_one_graph():
    """torch.compile of G must not break on the float32 layer (forward
    hooks that left autocast by hand did)."""
    G = small_generator()
    compiled = torch.compile(G, backend='eager', fullgraph=True)
    z = torch.randn(4, 8)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        images = compiled(z)
        expected = G(z)
    assert images.dtype == torch.float32 and torch.equal(images, expected)


def test_the_whole_generator_pickles(tmp_path):
    G = small_generator()
    torch.save(G, tmp_path / 'G.pt')
    loaded = torch.load(tmp_path / 'G.pt', weights_only=False)
    z = torch.randn(2, 8)
    assert torch.equal(loaded(z), G(z))
