"""Pruning on small real models (residual, concatenating, plain), checked with Torch-Pruning and ONNX Runtime.

Every choice of the pruning knob has a test showing it does what it says; where it can, a test checks the result
against a second, independent computation (which channels a norm keeps, which weights were the smallest).
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import optuna
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from evaluators.errors import ConfigError, TrialFailure
from evaluators.latency import TimingSettings, measure
from search.config import parse
from spaces.export import to_onnx
from spaces.pruning import channel_count, epochs_per_step, prune, sparsity
from spaces.pruning_knobs import PruningChoice, PruningSpace, sample_pruning

pytestmark = pytest.mark.fast


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) + x


class ResidualCNN(nn.Module):
    """Widths 64/128 on 8x8 inputs: big enough that halving the channels is clearly faster in ONNX Runtime."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU())
        self.block1 = ResidualBlock(width)  # its add ties its channels to the stem's
        self.block2 = ResidualBlock(width)
        self.widen = nn.Sequential(nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU())
        self.block3 = ResidualBlock(2 * width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(2 * width, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.block1(self.stem(x)))
        return self.classifier(self.head(self.block3(self.widen(x))))


@pytest.fixture
def model() -> ResidualCNN:
    torch.manual_seed(0)
    return ResidualCNN().eval()


@pytest.fixture
def example() -> torch.Tensor:
    return torch.rand(1, 1, 8, 8)


def _conv_widths(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def _session(model: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])


def prune_channels(model: nn.Module, example: torch.Tensor, ratio: float, importance: str = "l2") -> nn.Module:
    """Structured, one shot, only the classifier protected (the widths stay multiples of 8)."""
    return prune(model, example, PruningChoice(ratio=ratio, importance=importance, protect_first_last=False))


def _conv_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of every convolution on one input, from the shapes a forward pass produces."""
    total = 0

    def count(module: nn.Conv2d, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        kh, kw = module.kernel_size
        total += output.numel() * (module.in_channels // module.groups) * kh * kw

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(example)
    for hook in hooks:
        hook.remove()
    return total


@pytest.mark.parametrize("importance", ["l2", "l1"])
def test_half_pruning_removes_channels_in_multiples_of_8_and_keeps_the_output(
    model: ResidualCNN, example: torch.Tensor, importance: str
) -> None:
    before = channel_count(model)
    pruned = prune_channels(model, example, 0.5, importance=importance)
    assert pruned is model
    assert channel_count(pruned) < before
    assert all(width % 8 == 0 for width in _conv_widths(pruned)), _conv_widths(pruned)
    assert pruned.classifier.out_features == 10
    with torch.no_grad():
        assert pruned(torch.rand(3, 1, 8, 8)).shape == (3, 10)


def test_pruned_residual_model_exports_and_runs_in_onnxruntime(model: ResidualCNN, example: torch.Tensor) -> None:
    prune_channels(model, example, 0.5)
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    logits = _session(to_onnx(model, example)).run(None, {"input": x.numpy()})[0]
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_half_pruned_model_does_a_quarter_of_the_convolution_work(
    model: ResidualCNN, example: torch.Tensor, request: pytest.FixtureRequest
) -> None:
    macs = _conv_macs(model, example)
    original = to_onnx(model, example)
    pruned = to_onnx(prune_channels(model, example, 0.5), example)
    # Halving both sides of every inner convolution quarters its work (the input conv only halves).
    assert _conv_macs(model, example) <= 0.3 * macs
    assert len(pruned) * 3 < len(original)
    # Shown, not asserted: a timing on a shared machine decides nothing (measured 3.5-4.5x faster here).
    settings = TimingSettings(threads=1, batch_size=1, warmup=10, min_repeats=50, max_repeats=50, max_seconds=5)
    timings = {"dense_p50_ms": measure(original, settings).p50_ms, "pruned_p50_ms": measure(pruned, settings).p50_ms}
    request.node.user_properties.extend(timings.items())  # in the JUnit report; printed with -rP
    print(timings)


def test_ratio_zero_leaves_the_model_untouched(model: ResidualCNN, example: torch.Tensor) -> None:
    widths = _conv_widths(model)
    state = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    assert prune_channels(model, example, 0.0) is model
    assert _conv_widths(model) == widths
    assert all(torch.equal(tensor, state[name]) for name, tensor in model.state_dict().items())


def test_unknown_importance_is_a_config_error_listing_the_valid_ones(model: ResidualCNN, example: torch.Tensor) -> None:
    # The schema refuses it in an experiment file; a choice built by hand fails at the registry, never falls back.
    with pytest.raises(ConfigError, match="'l3'") as caught:
        prune_channels(model, example, 0.5, importance="l3")
    assert "l1, l2, taylor, bn_scale, random" in str(caught.value)


# --- The knob's choices (prune(model, example, PruningChoice)) -------------------------------------------------


class CatBlock(nn.Module):
    """Two branches concatenated back to the block's width, then added to its input."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.wide = nn.Conv2d(channels, channels // 2, 3, padding=1)
        self.narrow = nn.Conv2d(channels, channels // 2, 1)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(torch.cat([self.wide(x), self.narrow(x)], dim=1))) + x


class SplitMerge(nn.Module):
    """Two branches of different widths concatenated, then merged by a convolution (no residual)."""

    def __init__(self, channels: int, out: int) -> None:
        super().__init__()
        self.a = nn.Conv2d(channels, channels, 3, padding=1)
        self.b = nn.Conv2d(channels, channels // 2, 1)
        self.merge = nn.Conv2d(channels + channels // 2, out, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.merge(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], dim=1)))


class CatResidualCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.block1 = CatBlock(32)
        self.split = SplitMerge(32, 64)
        self.block2 = CatBlock(64)
        self.classifier = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block2(self.split(self.block1(self.stem(x))))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class Probe(nn.Module):
    """A plain CNN whose middle layer (conv_a) tests set up so that each importance must keep a known half."""

    def __init__(self, a: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, 16, 3, padding=1)
        self.conv_a = nn.Conv2d(16, a, 3, padding=1)
        self.bn_a = nn.BatchNorm2d(a)
        self.conv_b = nn.Conv2d(a, 32, 3, padding=1)
        self.classifier = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn_a(self.conv_a(torch.relu(self.stem(x)))))
        x = torch.relu(self.conv_b(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _probe() -> Probe:
    torch.manual_seed(0)
    return Probe().eval()


def _batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(n, 1, 8, 8, generator=generator), torch.randint(0, 10, (n,), generator=generator)


def _fit(model: nn.Module, epochs: int) -> None:
    """A real, tiny recovery: SGD on a fixed batch (what the sweep's distillation does, at toy scale)."""
    x, y = _batch(8)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


def _kept_rows(before: torch.Tensor, after: torch.Tensor) -> set[int]:
    """Which output channels of a layer survived, found by matching the surviving weight rows to the original."""
    kept = set()
    for row in after:
        match = [i for i, old in enumerate(before) if torch.equal(old, row)]
        assert len(match) == 1, "a surviving row must equal exactly one original row"
        kept.add(match[0])
    return kept


@pytest.mark.parametrize("importance", ["l1", "l2", "taylor", "bn_scale", "random"])
@pytest.mark.parametrize("scope", ["uniform", "global"])
def test_every_importance_and_scope_removes_channels_of_a_residual_net_and_keeps_its_output(
    model: ResidualCNN, example: torch.Tensor, importance: str, scope: str
) -> None:
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        nn.init.uniform_(bn.weight, 0.1, 1.0)  # trained-like BN scales; at init they all tie at 1
    before = channel_count(model)
    choice = PruningChoice(ratio=0.5, importance=importance, scope=scope, protect_first_last=False)
    assert prune(model, example, choice, batch=_batch()) is model
    assert channel_count(model) < before, _conv_widths(model)
    # Residual adds tie the stem to both blocks, and the widening conv to block3: Torch-Pruning keeps them equal.
    assert model.stem[0].out_channels == model.block1.conv.out_channels == model.block2.conv.out_channels
    assert model.widen[0].out_channels == model.block3.conv.out_channels == model.classifier.in_features
    with torch.no_grad():
        assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)


@pytest.mark.parametrize("importance, keeps", [("l1", "spread"), ("l2", "spiky")])
def test_l1_and_l2_keep_the_channels_with_the_larger_norm_of_their_kind(importance: str, keeps: str) -> None:
    model = _probe()
    with torch.no_grad():
        # Even rows: 144 weights of 0.1 (L1 14.4, L2^2 1.44). Odd rows: one weight of 2 (L1 2, L2^2 4).
        # Everything else in conv_a's group is the same for every channel, so the row decides.
        model.conv_a.weight.zero_()
        model.conv_a.weight[0::2] = 0.1
        model.conv_a.weight[1::2, 0, 0, 0] = 2.0
        model.conv_b.weight.fill_(0.05)
    prune(model, torch.rand(1, 1, 8, 8), PruningChoice(ratio=0.5, importance=importance))
    rows = model.conv_a.weight.detach().flatten(1)
    spread = [bool((row == 0.1).all()) for row in rows]
    assert len(rows) == 16
    assert all(spread) if keeps == "spread" else not any(spread)


def test_taylor_ranks_by_gradient_and_removes_channels_that_do_not_reach_the_loss() -> None:
    def dead_half() -> Probe:
        model = _probe()
        with torch.no_grad():
            model.conv_a.weight[:16] *= 10  # large weights ...
            model.conv_b.weight[:, :16] = 0  # ... whose outputs no later layer reads: zero gradient, zero effect
            model.bn_a.bias.fill_(1.0)  # every channel active after the ReLU, so live ones have gradients
        return model

    model = dead_half()
    original = model.conv_a.weight.detach().clone()
    example, choice = torch.rand(1, 1, 8, 8), PruningChoice(ratio=0.5, importance="taylor")
    prune(model, example, choice, batch=_batch())
    assert _kept_rows(original, model.conv_a.weight.detach()) == set(range(16, 32))
    assert all(p.grad is None for p in model.parameters())  # no stale gradients handed on to recovery
    # The magnitude criterion, on the same model, keeps exactly the dead channels: the difference is the gradient.
    magnitude = dead_half()
    prune(magnitude, example, PruningChoice(ratio=0.5, importance="l2"))
    assert _kept_rows(original, magnitude.conv_a.weight.detach()) == set(range(16))


def test_taylor_without_a_batch_is_a_trial_failure_that_says_what_to_pass(
    model: ResidualCNN, example: torch.Tensor
) -> None:
    with pytest.raises(TrialFailure, match="batch") as caught:
        prune(model, example, PruningChoice(ratio=0.5, importance="taylor"))
    assert "l1, l2, bn_scale, random" in str(caught.value)  # every importance that needs no gradients
    assert not isinstance(caught.value, ConfigError)


def test_bn_scale_keeps_the_channels_with_the_largest_batch_norm_scales() -> None:
    model = _probe()
    with torch.no_grad():
        model.bn_a.weight.copy_(torch.randperm(32).float() / 32 + 0.01)  # distinct scales
    scales = model.bn_a.weight.detach().clone()
    prune(model, torch.rand(1, 1, 8, 8), PruningChoice(ratio=0.5, importance="bn_scale"))
    assert sorted(model.bn_a.weight.tolist()) == pytest.approx(sorted(scales.topk(16).values.tolist()))
    assert model.conv_b.out_channels == 32  # its group has no BatchNorm, so BN scales cannot rank it


def test_random_importance_keeps_a_different_half_for_a_different_seed() -> None:
    kept = []
    for seed in (0, 1):
        model = _probe()
        original = model.conv_a.weight.detach().clone()
        torch.manual_seed(seed)
        prune(model, torch.rand(1, 1, 8, 8), PruningChoice(ratio=0.5, importance="random"))
        kept.append(_kept_rows(original, model.conv_a.weight.detach()))
    assert len(kept[0]) == len(kept[1]) == 16
    assert kept[0] != kept[1]


def test_global_scope_prunes_layers_unevenly_where_uniform_halves_each_at_the_same_overall_ratio() -> None:
    def pruned(scope: str) -> tuple[int, int]:
        model = _probe()
        with torch.no_grad():
            # 24 of conv_a's 32 channels are nearly zero everywhere in their group; conv_b's are ordinary.
            model.conv_a.weight[:24] *= 0.01
            model.bn_a.weight[:24] *= 0.01
            model.conv_b.weight[:, :24] *= 0.01
        prune(model, torch.rand(1, 1, 8, 8), PruningChoice(ratio=0.5, scope=scope))
        return model.conv_a.out_channels, model.conv_b.out_channels

    uniform, global_ = pruned("uniform"), pruned("global")
    assert uniform == (16, 16)
    # Ranked together, the 24 weak channels go first and only 8 of conv_b's follow.
    assert global_ == (8, 24), global_
    assert sum(uniform) == sum(global_) == 32  # both remove half of the 64 prunable channels


@pytest.mark.parametrize("recover_epochs, calls", [(3, [1, 1, 1]), (4, [1, 1, 2]), (2, [1, 1])])
def test_iterative_steps_recover_between_steps_and_end_at_the_one_shot_widths(
    example: torch.Tensor, recover_epochs: int, calls: list[int]
) -> None:
    torch.manual_seed(0)
    one_shot = prune(ResidualCNN(width=32).eval(), example, PruningChoice(ratio=0.5, protect_first_last=False))
    torch.manual_seed(0)
    model = ResidualCNN(width=32).eval()
    original = channel_count(model)
    seen: list[tuple[int, int]] = []  # (epochs, channels when called)

    def recover(m: nn.Module, epochs: int) -> None:
        seen.append((epochs, channel_count(m)))
        _fit(m, epochs)

    choice = PruningChoice(ratio=0.5, steps=3, recover_epochs=recover_epochs, protect_first_last=False)
    prune(model, example, choice, recover=recover, batch=_batch())
    assert [epochs for epochs, _ in seen] == calls == [e for e in epochs_per_step(recover_epochs, 3) if e]
    widths = [channels for _, channels in seen]
    assert original > widths[0] and widths == sorted(set(widths), reverse=True)  # a bit more at each step
    assert _conv_widths(model) == _conv_widths(one_shot)
    assert not model.training  # left in the mode it came in
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)


def test_one_shot_recovers_once_with_all_the_epochs(model: ResidualCNN, example: torch.Tensor) -> None:
    seen: list[int] = []
    prune(model, example, PruningChoice(ratio=0.5, recover_epochs=2), recover=lambda m, e: seen.append(e))
    assert seen == [2]


def test_concatenation_and_residual_model_stays_consistent_and_runs_in_onnxruntime() -> None:
    torch.manual_seed(0)
    model, example = CatResidualCNN().eval(), torch.rand(1, 1, 8, 8)
    before = channel_count(model)
    prune(model, example, PruningChoice(ratio=0.5, protect_first_last=False))
    assert channel_count(model) < before
    for block in (model.block1, model.block2):  # the concatenation still adds up to the residual's width
        assert block.wide.out_channels + block.narrow.out_channels == block.bn.num_features == block.wide.in_channels
    assert model.split.merge.in_channels == model.split.a.out_channels + model.split.b.out_channels
    assert model.stem[0].out_channels < 32 and model.split.a.out_channels < 32
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        expected = model(x).numpy()
    logits = _session(to_onnx(model, example)).run(None, {"input": x.numpy()})[0]
    assert logits.shape == (3, 10)
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)


def test_protect_first_last_keeps_the_first_conv_and_the_classes(example: torch.Tensor) -> None:
    protected, exposed = _probe(), _probe()
    prune(protected, example, PruningChoice(ratio=0.5, protect_first_last=True))
    prune(exposed, example, PruningChoice(ratio=0.5, protect_first_last=False))
    assert protected.stem.out_channels == 16 and exposed.stem.out_channels == 8
    assert protected.conv_a.out_channels == exposed.conv_a.out_channels == 16  # the rest is pruned either way
    assert protected.classifier.out_features == exposed.classifier.out_features == 10
    # In a residual net the first conv's width is tied to the whole first stage, which is then kept too.
    torch.manual_seed(0)
    residual = prune(ResidualCNN().eval(), example, PruningChoice(ratio=0.5))
    assert _conv_widths(residual) == [64, 64, 64, 64, 64]


def test_unstructured_zeroes_the_smallest_weights_but_keeps_every_shape_and_the_file_size(
    model: ResidualCNN, example: torch.Tensor, request: pytest.FixtureRequest
) -> None:
    shapes = {name: p.shape for name, p in model.named_parameters()}
    dense = to_onnx(model, example)
    first, last = model.stem[0], model.classifier
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)) and m not in (first, last)]
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in layers])

    prune(model, example, PruningChoice(ratio=0.5, method="unstructured"))

    assert {name: p.shape for name, p in model.named_parameters()} == shapes
    assert not [name for name, _ in model.named_buffers() if name.endswith("_mask")]  # masks removed, zeros kept
    zeroed = torch.cat([(m.weight.detach() == 0).flatten() for m in layers])
    assert zeroed.sum().item() == round(0.5 * len(zeroed))
    assert magnitudes[zeroed].max() <= magnitudes[~zeroed].min()  # global L1: the smallest, across layers
    assert (first.weight != 0).all() and (last.weight != 0).all()  # protected
    total = sum(m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert sparsity(model) == pytest.approx(zeroed.sum().item() / total)
    sparse = to_onnx(model, example)
    assert abs(len(sparse) - len(dense)) <= 16, (len(dense), len(sparse))
    with torch.no_grad():
        assert model(torch.rand(3, 1, 8, 8)).shape == (3, 10)
    # Shown side by side, not asserted: on a dense runtime zeros are multiplied like any other number.
    settings = TimingSettings(threads=1, batch_size=1, warmup=10, min_repeats=50, max_repeats=50, max_seconds=5)
    timings = {"dense_p50_ms": measure(dense, settings).p50_ms, "unstructured_p50_ms": measure(sparse, settings).p50_ms}
    request.node.user_properties.extend(timings.items())  # in the JUnit report; printed with -rP
    print(timings)


def test_unstructured_zeros_survive_recovery_given_to_prune(model: ResidualCNN, example: torch.Tensor) -> None:
    choice = PruningChoice(ratio=0.5, method="unstructured", recover_epochs=3, protect_first_last=False)
    seen: list[int] = []

    def recover(m: nn.Module, epochs: int) -> None:
        before = m.block1.conv.weight.detach().clone()
        _fit(m, epochs)
        seen.append(epochs)
        assert not torch.equal(m.block1.conv.weight.detach(), before)  # recovery really trained

    prune(model, example, choice, recover=recover)
    assert seen == [3]
    assert sparsity(model) == pytest.approx(0.5, abs=1e-3)


def test_sparsity_counts_zero_conv_and_linear_weights() -> None:
    layer = nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[0.0, 1.0, 0.0, 2.0], [3.0, 0.0, 4.0, 5.0]]))
    assert sparsity(nn.Sequential(layer, nn.ReLU())) == 3 / 8


# --- The knob in an experiment file and in Optuna ----------------------------------------------------------------


def test_every_pruning_knob_is_reachable_from_an_experiment_file() -> None:
    space = parse(
        {
            "name": "x",
            "space": {
                "pruning": {
                    "ratio": [0.0, 0.5],
                    "method": ["structured", "unstructured"],
                    "recover_epochs": [1, 2],
                    "importance": ["l1", "taylor"],
                    "scope": "global",
                    "steps": [1, 3],
                    "round_to": 16,
                    "protect_first_last": False,
                }
            },
        }
    ).space.pruning
    assert space.method == ["structured", "unstructured"] and space.importance == ["l1", "taylor"]
    assert (space.scope, space.steps, space.round_to, space.protect_first_last) == (["global"], [1, 3], 16, False)


@pytest.mark.parametrize(
    "pruning, field, words",
    [
        ({"importance": "l3"}, "space.pruning.importance", "l1, l2, taylor, bn_scale, random"),
        ({"scope": ["uniform", "globl"]}, "space.pruning.scope", "did you mean 'global'"),
        ({"method": "sparse"}, "space.pruning.method", "structured, unstructured"),
        ({"steps": 0}, "space.pruning.steps", "1 = one shot"),
        ({"round_to": [8, 0]}, "space.pruning.round_to", "must be > 0"),
        ({"ratio": [0.5, 1.0]}, "space.pruning.ratio", "[0, 1)"),
        ({"importance": []}, "space.pruning.importance", "at least one"),
    ],
)
def test_a_bad_pruning_knob_is_refused_naming_the_field_and_what_is_allowed(
    pruning: dict, field: str, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse({"name": "x", "space": {"pruning": pruning}})
    assert field in str(caught.value) and words in str(caught.value)


def _sample(space: PruningSpace, n: int) -> list[tuple[optuna.trial.Trial, PruningChoice]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    out = []
    for _ in range(n):
        trial = study.ask()
        out.append((trial, sample_pruning(trial, space)))
    return out


def test_sampling_asks_for_a_knob_only_where_it_means_something() -> None:
    space = PruningSpace(
        ratio=[0.0, 0.5],
        method=["structured", "unstructured"],
        recover_epochs=[1, 2],
        importance=["l1", "taylor"],
        scope=["uniform", "global"],
        steps=[1, 3],
    )
    pairs = _sample(space, 80)
    kinds = {"none": 0, "structured": 0, "unstructured": 0}
    for trial, choice in pairs:
        params = choice.params()
        if choice.ratio == 0:
            kinds["none"] += 1
            assert set(trial.params) == {"pruning.ratio"} and params == {"pruning.ratio": 0.0}
            assert choice.describe() == "no prune"
            continue
        kinds[choice.method] += 1
        common = {"pruning.ratio", "pruning.method", "pruning.recover_epochs"}
        if choice.method == "unstructured":
            assert set(trial.params) == common
            assert set(params) == common | {"pruning.protect_first_last"}
            assert choice.describe() == "prune 0.5 unstructured"
        else:
            assert set(trial.params) == common | {"pruning.importance", "pruning.scope", "pruning.steps"}
            assert set(params) == set(trial.params) | {"pruning.protect_first_last", "pruning.round_to"}
            assert params["pruning.round_to"] == 8  # fixed in the space: a param of the run, not of Optuna
        assert {k: params[k] for k in trial.params} == trial.params  # what Optuna chose is what is applied
        assert type(choice.steps) is int and type(choice.recover_epochs) is int
    assert all(kinds.values()), kinds
    structured = [c for _, c in pairs if c.ratio and c.structured]
    assert {c.importance for c in structured} == {"l1", "taylor"} and {c.steps for c in structured} == {1, 3}


def test_default_space_keeps_todays_behaviour() -> None:
    space = PruningSpace()
    for trial, choice in _sample(space, 20):
        assert set(trial.params) == {"pruning.ratio"}  # the only knob with a choice by default
        if choice.ratio:
            assert (
                choice.method,
                choice.importance,
                choice.scope,
                choice.steps,
                choice.round_to,
                choice.recover_epochs,
            ) == ("structured", "l2", "uniform", 1, 8, 4)
            assert choice.describe() == f"prune {choice.ratio:g}"


@pytest.mark.parametrize(
    "choice, label",
    [
        (PruningChoice(0.25, 4), "prune 0.25"),
        (PruningChoice(0.5, 2, importance="taylor", scope="global", steps=3), "prune 0.5 taylor global 3 steps"),
        (PruningChoice(0.5, 2, method="unstructured", protect_first_last=False), "prune 0.5 unstructured all layers"),
        (PruningChoice(0.0), "no prune"),
    ],
)
def test_describe_names_what_differs_from_the_defaults(choice: PruningChoice, label: str) -> None:
    assert choice.describe() == label
