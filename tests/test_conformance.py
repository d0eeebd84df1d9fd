"""Every entry of every registry keeps the same properties (tests/conformance.py says which).

Parametrised over the registries themselves: a newly registered family, method, importance or scheme is checked
here without a new test.
"""

from __future__ import annotations

import conformance
import numpy as np
import pytest
import torch

from evaluators.errors import ConfigError
from experiments.tasks import digits
from spaces.pruning_knobs import IMPORTANCES, PRUNING_METHODS
from spaces.quantization_knobs import SCHEMES
from spaces.student_knobs import STUDENT_FAMILIES


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


@pytest.mark.parametrize(
    "registry, name",
    [(STUDENT_FAMILIES, "cnnn"), (PRUNING_METHODS, "sparse"), (IMPORTANCES, "l3"), (SCHEMES, "int9")],
    ids=["student family", "pruning method", "importance", "quantization scheme"],
)
def test_an_unknown_name_is_refused_at_the_edge_naming_every_registered_one(registry, name: str) -> None:
    section = {
        STUDENT_FAMILIES: {"students": {name: {}}},
        PRUNING_METHODS: {"pruning": {"method": name}},
        IMPORTANCES: {"pruning": {"importance": name}},
        SCHEMES: {"quantization": {"schemes": [name]}},
    }
    with pytest.raises(ConfigError) as caught:
        conformance.space_naming(section[registry])
    assert f"{name!r} is not allowed; choose one of: " in str(caught.value)
    for registered in registry.names():
        assert registered in str(caught.value)
