"""What can be done to a model: student families, pruning, quantization, and the plan that composes them.

The extension points a user adds to (one class each, then its register_* call; see the README's "Add your own"):
"""

from spaces.pruning_knobs import Importance, PruningMethod, register_importance, register_method
from spaces.quantization_knobs import QuantizationScheme, register_scheme
from spaces.student_knobs import StudentChoice, StudentFamily, register_family

__all__ = [
    "Importance",
    "PruningMethod",
    "QuantizationScheme",
    "StudentChoice",
    "StudentFamily",
    "register_family",
    "register_importance",
    "register_method",
    "register_scheme",
]
