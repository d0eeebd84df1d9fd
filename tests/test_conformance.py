"""Every entry of every registry keeps the same properties (search/conformance.py, shipped in the package, says which).

Parametrised over the registries themselves: a newly registered family, method, importance, scheme, target or pick
policy is checked here without a new test.
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from evaluators.errors import ConfigError
from evaluators.targets import TARGETS
from experiments.tasks import digits
from search import conformance
from search.config import parse
from search.pick import PICK_POLICIES
from spaces.pruning_knobs import IMPORTANCES, PRUNING_METHODS
from spaces.quantization_knobs import SCHEMES
from spaces.student_knobs import STUDENT_FAMILIES

pytestmark = pytest.mark.fast


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def calibration() -> np.ndarray:
    return digits(0).x_calib[:64]


@pytest.fixture(scope="module")
def float_model() -> bytes:
    return conformance.small_float_model()


@pytest.mark.parametrize("name", STUDENT_FAMILIES.names())
def test_every_student_family_conforms(name: str) -> None:
    conformance.check_student_family(name)


@pytest.mark.parametrize("method", PRUNING_METHODS.names())
def test_every_pruning_method_conforms(method: str) -> None:
    conformance.check_pruning(method, "l2")


@pytest.mark.parametrize("importance", IMPORTANCES.names())
def test_every_pruning_importance_conforms(importance: str) -> None:
    conformance.check_pruning("structured", importance)


@pytest.mark.parametrize("scheme", SCHEMES.names())
def test_every_quantization_scheme_conforms(scheme: str, calibration: np.ndarray, float_model: bytes) -> None:
    conformance.check_quantization(scheme, calibration, float_model)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("kind", TARGETS.names())
def test_every_target_conforms(kind: str, tmp_path) -> None:
    fields = {}
    if TARGETS.get(kind).takes_url:  # no agent listens there: its check must fail at once, naming the kind
        (tmp_path / "token").write_text("a-token")
        fields = {"url": f"http://127.0.0.1:{_closed_port()}", "token_file": str(tmp_path / "token")}
    conformance.check_target(kind, **fields)


@pytest.mark.parametrize("name", PICK_POLICIES.names())
def test_every_pick_policy_conforms(name: str) -> None:
    conformance.check_pick_policy(name)


@pytest.mark.parametrize(
    "registry, name",
    [
        (STUDENT_FAMILIES, "cnnn"),
        (PRUNING_METHODS, "sparse"),
        (IMPORTANCES, "l3"),
        (SCHEMES, "int9"),
        (TARGETS, "cpus"),
        (PICK_POLICIES, "fastest"),
    ],
    ids=["student family", "pruning method", "importance", "quantization scheme", "target", "pick policy"],
)
def test_an_unknown_name_is_refused_at_the_edge_naming_every_registered_one(registry, name: str) -> None:
    section = {
        STUDENT_FAMILIES: {"space": {"students": {name: {}}}},
        PRUNING_METHODS: {"space": {"pruning": {"method": name}}},
        IMPORTANCES: {"space": {"pruning": {"importance": name}}},
        SCHEMES: {"space": {"quantization": {"schemes": [name]}}},
        TARGETS: {"target": {"kind": name}},
        PICK_POLICIES: {"pick": {"policy": name}},
    }
    with pytest.raises(ConfigError) as caught:
        parse({"name": "x", **section[registry]})
    assert f"{name!r} is not allowed; choose one of: " in str(caught.value)
    for registered in registry.names():
        assert registered in str(caught.value)
