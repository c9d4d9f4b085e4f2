"""Tests for helpers.choose_precision and the CPU facts it relies on.

The timing is replaced by fakes wherever the decision is tested, so the
outcome does not depend on this machine's CPU or load; one test runs the real
(small) measurement.
"""

import warnings

import pytest
import torch

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
