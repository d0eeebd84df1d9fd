"""The timing method on real ONNX Runtime sessions of small conv nets exported by torch."""

import io

import numpy as np
import pytest
import torch
from scipy import stats

from evaluators import (
    ConfigError,
    LatencyStats,
    SlimsweepError,
    TimingSettings,
    input_shape,
    make_session,
    measure,
)
from evaluators.latency import median_ci

pytestmark = pytest.mark.fast

# Few repeats and a short cap keep the file fast; the method is the same as with the defaults.
QUICK = TimingSettings(warmup=5, min_repeats=30, max_repeats=200, max_seconds=5.0)


def conv_net(channels: int) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(channels, channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(channels, 10),
    ).eval()


def export(model: torch.nn.Module, batch: int = 1, dynamic_axes: dict | None = None) -> bytes:
    if dynamic_axes is None:
        dynamic_axes = {"input": {0: "batch"}, "logits": {0: "batch"}}
    f = io.BytesIO()
    torch.onnx.export(
        model,
        (torch.zeros(batch, 1, 8, 8),),
        f,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes=dynamic_axes,
    )
    return f.getvalue()


@pytest.fixture(scope="module")
def small() -> bytes:
    return export(conv_net(8))


def test_measure_reports_ordered_percentiles_within_repeat_bounds(small):
    result = measure(small, QUICK)
    assert isinstance(result, LatencyStats)
    assert 0 < result.p50_ms <= result.p90_ms <= result.p95_ms <= result.p99_ms
    assert QUICK.min_repeats <= result.repeats <= QUICK.max_repeats
    assert result.throughput == pytest.approx(1 / (result.mean_ms / 1e3))
    assert set(result.metrics()) == {
        "latency_p50_ms",
        "latency_p90_ms",
        "latency_p95_ms",
        "latency_p99_ms",
        "latency_mean_ms",
        "latency_cv",
        "latency_ci_rel",
        "throughput_per_s",
    }
    assert all(np.isfinite(v) for v in result.metrics().values())


def test_a_thousand_times_the_convolution_work_is_measured_slower(small):
    # 8 -> 256 channels is ~1,000x the multiply-adds of the middle conv (milliseconds against tens of microseconds):
    # a gap no busy machine closes, so only the order is asserted, never a ratio.
    big = export(conv_net(256))
    fast = measure(small, QUICK)
    slow = measure(big, QUICK)
    assert slow.p50_ms > fast.p50_ms


def test_repeats_stop_at_max_repeats_when_the_interval_never_gets_tight(small):
    never_tight = TimingSettings(warmup=0, min_repeats=10, max_repeats=60, max_seconds=60.0, target_rel_ci=0.0)
    assert measure(small, never_tight).repeats == 60


def test_time_cap_cuts_the_loop_and_flags_it_unstable(small):
    result = measure(small, TimingSettings(warmup=0, min_repeats=50, max_seconds=0.0))
    assert result.repeats < 50
    assert not result.stable


def test_noisy_measurement_is_retried_and_flagged(small):
    # Real timings always vary a little, so a CV limit of 0 always trips the retry.
    noisy = measure(small, TimingSettings(warmup=2, min_repeats=20, max_repeats=40, max_cv=0.0))
    assert noisy.retried and not noisy.stable
    calm = measure(small, TimingSettings(warmup=2, min_repeats=20, max_repeats=40, max_cv=1e9))
    assert not calm.retried


def test_batch_size_sets_the_input_and_the_throughput(small):
    assert input_shape(make_session(small), 4) == (4, 1, 8, 8)
    result = measure(small, TimingSettings(batch_size=4, warmup=2, min_repeats=20, max_repeats=40))
    assert result.throughput == pytest.approx(4 / (result.mean_ms / 1e3))


def test_fixed_batch_model_keeps_its_batch_and_refuses_another():
    fixed = export(conv_net(8), batch=2, dynamic_axes={})
    assert input_shape(make_session(fixed), 8) == (2, 1, 8, 8)
    with pytest.raises(SlimsweepError, match="batch_size=2"):
        measure(fixed, TimingSettings(batch_size=8))


def test_symbolic_non_batch_dimension_is_refused_by_name():
    model = export(conv_net(8), dynamic_axes={"input": {0: "batch", 2: "height"}, "logits": {0: "batch"}})
    with pytest.raises(SlimsweepError, match="'input'"):
        input_shape(make_session(model), 1)


def test_invalid_settings_name_the_field():
    with pytest.raises(ConfigError, match="min_repeats"):
        TimingSettings(min_repeats=100, max_repeats=10)
    with pytest.raises(ConfigError, match="threads"):
        TimingSettings(threads=0)


@pytest.mark.parametrize("n", [50, 51, 200, 1000, 5000])
def test_median_ci_ranks_cover_the_median_95_percent_of_the_time(n):
    # On the sample 0..n-1 the interval's values are its 0-based ranks; the number of draws below the true
    # median is Binomial(n, 1/2), so the exact coverage of the interval is a second, independent computation.
    # Rounding the ranks outwards makes the interval a little conservative, never short of 95%.
    lower, upper = median_ci(np.arange(n))
    coverage = stats.binom.cdf(upper, n, 0.5) - stats.binom.cdf(lower, n, 0.5)
    assert 0.95 <= coverage <= 0.985


def test_median_ci_agrees_with_a_bootstrap_on_skewed_timings():
    rng = np.random.default_rng(1)
    sample = rng.lognormal(mean=0.0, sigma=0.3, size=2000)  # right-skewed, like latencies
    lower, upper = median_ci(sample)
    medians = np.median(rng.choice(sample, size=(2000, sample.size)), axis=1)
    boot_lower, boot_upper = np.quantile(medians, [0.025, 0.975])
    width = upper - lower
    assert lower < np.median(sample) < upper
    assert abs(lower - boot_lower) < 0.15 * width
    assert abs(upper - boot_upper) < 0.15 * width
