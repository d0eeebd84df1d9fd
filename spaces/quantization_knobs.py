"""The quantization knob: the QuantizationScheme protocol, its registry, the schema section, the choice.

A scheme is one class (spaces/quantization_schemes.py has the built-in ones), shaped like a student family: its
name, whether it calibrates (the options under `static:` then apply), its own options as pydantic fields (its section
`space.quantization.<name>`, each a fixed value or a list of choices, sampled as `<name>.<option>` only in trials
that chose it), how it describes a choice, and `apply`, which imports ONNX Runtime's tools only when a trial
quantizes. The section's allowed scheme names are the registry's.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Union

from pydantic import AfterValidator, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from evaluators.errors import not_allowed
from evaluators.registry import Registry
from spaces.knobs import IntKnob, Strict, TrialLike, knob
from spaces.sections import with_sections

if TYPE_CHECKING:
    import numpy as np

ACTIVATIONS = ("uint8_asym", "int8_sym")
CALIBRATIONS = ("minmax", "entropy", "percentile")
FLOAT_LAYERS = ("none", "first_last", "sensitive")

# A knob is a fixed value or a list of choices (as in spaces.knobs); the values are checked by _knob_values.
BoolKnob = Union[bool, list[bool]]
NameKnob = Union[str, list[str]]
SamplesKnob = Union[int, str, list[Union[int, str]]]


class QuantizationScheme(Strict):
    """One way of turning a float ONNX model into a deployable one; register a subclass with register_scheme.

    Its pydantic fields, if any, are its own options: the section `space.quantization.<name>` of the experiment
    file (each a fixed value or a list of choices); a trial that chose it samples them (`sample`), and `apply` reads
    them from the choice (`choice.<option>`).
    """

    name: ClassVar[str]
    calibrates: ClassVar[bool] = False  # activations calibrated on data: the `static:` options apply
    in_default_space: ClassVar[bool] = False  # searched when the file names no schemes

    def sample(self, trial: TrialLike) -> dict[str, Any]:
        """The scheme's own options for one trial (by default each field, as written, as `<name>.<option>`)."""
        return {option: knob(trial, f"{self.name}.{option}", getattr(self, option)) for option in self.model_fields}

    @classmethod
    def describe(cls, choice: "QuantizationChoice") -> str:
        """A short label of a choice of this scheme (its options as option=value)."""
        return " ".join([cls.name, *(f"{k}={v}" for k, v in choice.options)])

    @classmethod
    def weights_decide_structure(cls, choice: "QuantizationChoice") -> bool:
        """Whether the trained weights decide the quantized graph (then an untrained probe is not faithful)."""
        return False

    @classmethod
    @abstractmethod
    def apply(
        cls, model: bytes, choice: "QuantizationChoice", calibration: "np.ndarray", cache_dir: Path | None
    ) -> bytes:
        """Return the quantized ONNX model (import the heavy tools inside)."""


SCHEMES: Registry[type[QuantizationScheme]] = Registry("quantization scheme")


def register_scheme(scheme: type[QuantizationScheme]) -> type[QuantizationScheme]:
    """Make a scheme a choice of every experiment file (space.quantization.schemes, and its options section
    space.quantization.<name>); usable as a class decorator."""
    if scheme.name in ("schemes", "static"):
        raise ValueError(f"{scheme.name!r} is taken by the quantization section itself; choose another scheme name")
    return SCHEMES.register(scheme)


def default_schemes() -> list[str]:
    """The schemes searched when an experiment file names none."""
    return [s.name for s in SCHEMES if s.in_default_space]


def static_schemes() -> list[str]:
    """The schemes the `static:` options apply to (those that calibrate)."""
    return [s.name for s in SCHEMES if s.calibrates]


def _knob_values(v: Any, what: str, ok: Any, allowed: str) -> Any:
    """Check a fixed value or every choice of a list with `ok`; the error names the value and what is allowed."""
    if isinstance(v, list) and not v:
        raise ValueError(f"{what}: give at least one choice")
    for x in v if isinstance(v, list) else [v]:
        if not ok(x):
            raise ValueError(f"{what} got {x!r}; {allowed}")
    return v


def _positive_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


class StaticSpace(Strict):
    """Options of the int8 static schemes; sampled only in trials that chose one of them."""

    per_channel: BoolKnob = True
    activations: NameKnob = "uint8_asym"
    calibration: NameKnob = "minmax"
    calibration_samples: SamplesKnob = "all"
    # Restored accuracy on CPUs without VNNI (ONNX Runtime's quantization docs advise it there).
    reduce_range: BoolKnob = True
    float_layers: NameKnob = "none"
    sensitive_layers: IntKnob = 1

    @field_validator("per_channel", "reduce_range", mode="before")
    @classmethod
    def _bools(cls, v: Any, info: ValidationInfo) -> Any:
        return _knob_values(v, info.field_name, lambda x: isinstance(x, bool), "expected true, false or a list of them")

    @field_validator("activations", "calibration", "float_layers", mode="before")
    @classmethod
    def _names(cls, v: Any, info: ValidationInfo) -> Any:
        allowed = {"activations": ACTIVATIONS, "calibration": CALIBRATIONS, "float_layers": FLOAT_LAYERS}
        names = allowed[info.field_name]
        if isinstance(v, list) and not v:
            raise ValueError(f"{info.field_name}: give at least one choice")
        for x in v if isinstance(v, list) else [v]:
            if x not in names:
                raise ValueError(not_allowed(x, names))
        return v

    @field_validator("calibration_samples", mode="before")
    @classmethod
    def _samples(cls, v: Any) -> Any:
        return _knob_values(
            v,
            "calibration_samples",
            lambda x: x == "all" or _positive_int(x),
            "expected a number of samples >= 1 or 'all', or a list of them",
        )

    @field_validator("sensitive_layers", mode="before")
    @classmethod
    def _layers(cls, v: Any) -> Any:
        return _knob_values(v, "sensitive_layers", _positive_int, "expected a number of layers >= 1 or a list of them")

    @model_validator(mode="after")
    def _sensitive_only_where_it_applies(self) -> "StaticSpace":
        chosen = self.float_layers if isinstance(self.float_layers, list) else [self.float_layers]
        if "sensitive_layers" in self.model_fields_set and "sensitive" not in chosen:
            raise ValueError(
                f"sensitive_layers applies only when float_layers includes 'sensitive' "
                f"(got float_layers {self.float_layers!r}): add it or remove sensitive_layers"
            )
        return self


SCHEME_KNOB = "quantization.scheme"  # the Optuna parameter of the scheme


def _registered(name: str) -> str:
    return SCHEMES.check(name)


class QuantizationSpace(Strict):
    """Which registered quantization schemes the search may apply, the options of the calibrating ones, and the
    sections of schemes with options of their own (a key named after the scheme)."""

    model_config = ConfigDict(extra="allow")  # the schemes' own sections, validated by _sections

    schemes: list[Annotated[str, AfterValidator(_registered)]] = Field(default_factory=default_schemes)
    static: StaticSpace = StaticSpace()
    # Each trained model is also quantized in the space's other schemes and recorded as a model made on the way (a
    # plan of the space for the price of a quantization and a measurement, not a training).
    on_the_way: bool = True

    @model_validator(mode="wrap")
    @classmethod
    def _sections(cls, data: Any, handler: Any) -> "QuantizationSpace":
        stray = "options of a scheme that schemes {chosen} does not include: add it or remove this"
        return with_sections(cls, data, handler, SCHEMES, "schemes", stray)

    def section(self, scheme: str) -> QuantizationScheme | None:
        """The options section of a scheme with options of its own (None for a scheme without)."""
        return (self.__pydantic_extra__ or {}).get(scheme)

    @field_validator("schemes")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("give at least one scheme")
        return v

    @model_validator(mode="after")
    def _static_only_with_a_static_scheme(self) -> "QuantizationSpace":
        # Options that no trial would ever use are a mistake in the file, not something to ignore quietly.
        static = static_schemes()
        if "static" in self.model_fields_set and not set(self.schemes) & set(static):
            raise ValueError(
                f"static options apply only to {' and '.join(static)}, but schemes got "
                f"{self.schemes}: add a static scheme or remove the static section"
            )
        return self


@dataclass(frozen=True)
class QuantizationChoice:
    """Which ONNX Runtime quantization scheme to apply; the other fields matter only for the int8 static schemes."""

    scheme: str = "fp32"
    per_channel: bool = True
    activations: str = "uint8_asym"
    calibration: str = "minmax"
    calibration_samples: int | None = None  # None: every sample of the calibration split
    reduce_range: bool = True
    float_layers: str = "none"
    sensitive_layers: int = 1  # how many layers "sensitive" keeps in float
    options: tuple[tuple[str, Any], ...] = ()  # the scheme's own options, in its field order (also attributes)

    def __getattr__(self, name: str) -> Any:
        # Only reached for names that are not fields: the scheme's own options (choice.block_size).
        if not name.startswith("_"):
            for key, value in self.__dict__.get("options", ()):
                if key == name:
                    return value
        raise AttributeError(f"{type(self).__name__} of scheme {self.__dict__.get('scheme')!r} has no {name!r}")

    @property
    def is_static(self) -> bool:
        """Whether the scheme calibrates activations (and so the static options apply)."""
        return SCHEMES.get(self.scheme).calibrates

    def params(self) -> dict[str, Any]:
        """Dotted parameters; static options only for a static scheme, sensitive_layers only where it applies."""
        out: dict[str, Any] = {"quantization.scheme": self.scheme}
        out.update({f"quantization.{k}": v for k, v in self.options})
        if self.is_static:
            out.update({
                "quantization.per_channel": self.per_channel,
                "quantization.activations": self.activations,
                "quantization.calibration": self.calibration,
                "quantization.calibration_samples": self.calibration_samples or "all",
                "quantization.reduce_range": self.reduce_range,
                "quantization.float_layers": self.float_layers,
            })  # fmt: skip
            if self.float_layers == "sensitive":
                out["quantization.sensitive_layers"] = self.sensitive_layers
        return out

    def describe(self) -> str:
        """A short label: the scheme, then (for a static scheme) the options that differ from the defaults."""
        return SCHEMES.get(self.scheme).describe(self)

    def weights_decide_structure(self) -> bool:
        """Whether the trained weights decide the quantized graph (e.g. which layers a sensitivity pass keeps)."""
        return SCHEMES.get(self.scheme).weights_decide_structure(self)

    def static_label(self) -> str:
        """The scheme and the static options that differ from the defaults, e.g. 'int8_static_qdq (entropy)'."""
        parts = [
            "per-tensor" if not self.per_channel else "",
            self.activations if self.activations != "uint8_asym" else "",
            self.calibration if self.calibration != "minmax" else "",
            f"{self.calibration_samples} samples" if self.calibration_samples else "",
            "full range" if not self.reduce_range else "",
            {"none": "", "first_last": "float first+last", "sensitive": f"float top-{self.sensitive_layers}"}[
                self.float_layers
            ],
        ]
        parts = [p for p in parts if p]
        return f"{self.scheme} ({', '.join(parts)})" if parts else self.scheme


def sample_quantization(trial: TrialLike, space: QuantizationSpace) -> QuantizationChoice:
    """Sample a quantization choice; static options only for a static scheme, sensitive_layers only with 'sensitive'."""
    scheme = knob(trial, SCHEME_KNOB, list(space.schemes))
    section = space.section(scheme)
    options = tuple(section.sample(trial).items()) if section is not None else ()
    if not SCHEMES.get(scheme).calibrates:
        return QuantizationChoice(scheme=scheme, options=options)
    s = space.static
    float_layers = knob(trial, "quantization.float_layers", s.float_layers)
    samples = knob(trial, "quantization.calibration_samples", s.calibration_samples)
    return QuantizationChoice(
        scheme=scheme,
        per_channel=bool(knob(trial, "quantization.per_channel", s.per_channel)),
        activations=knob(trial, "quantization.activations", s.activations),
        calibration=knob(trial, "quantization.calibration", s.calibration),
        calibration_samples=None if samples == "all" else int(samples),
        reduce_range=bool(knob(trial, "quantization.reduce_range", s.reduce_range)),
        float_layers=float_layers,
        sensitive_layers=int(knob(trial, "quantization.sensitive_layers", s.sensitive_layers))
        if float_layers == "sensitive"
        else 1,
        options=options,
    )


# The built-in schemes register themselves on import; last, because they subclass QuantizationScheme above.
import spaces.quantization_schemes  # noqa: E402,F401
