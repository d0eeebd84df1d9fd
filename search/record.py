"""The layout of what slimsweep stores on a trial: one typed, versioned `TrialRecord` with its typed `TrialInfo`.

Only search/study.py writes it to (and reads it from) Optuna; this module is the layout alone, so a worker, the
driver and the benchmarks share one type without importing the study's storage code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from evaluators.errors import SlimsweepError
from evaluators.secrets import mask_secrets

# The layout of what slimsweep stores on a study and its trials. Studies written before the version was stamped
# have the same layout as version 1 and load as such; a study or trial stamped with a newer version is refused.
# `TrialInfo` is part of it: its stored form is the version-1 `info` dict, key for key (a field's name is its key);
# a change of a key's meaning or type bumps the version, and `TrialInfo.from_dict` converts the older form.
RECORD_VERSION = 1
VERSION = "slimsweep.record_version"
# Keys of the record on a trial (the layout of version 1; unchanged from studies written before the stamp).
KEYS = {
    "plan": "plan",
    "describe": "describe",
    "stages": "stages",
    "info": "info",
    "metrics": "metrics",
    "feasible": "feasible",
    "failure": "slimsweep.failure",
    "traceback": "slimsweep.traceback",
    "reuse_of": "slimsweep.reuse_of",
}
TRACEBACK_CHARS = 8000  # kept on the trial (its end, where the raise is); MLflow keeps the whole text
FAILURE_CHARS = 2000


@dataclass(eq=False)
class TrialInfo(MutableMapping):
    """How a trial ran: where, on which cores, what it skipped, what made it. Every field is None when not
    recorded. Also readable and writable as the dict it replaces (`info["channels"]`, `info.get(...)`), for
    callers not yet moved to the fields: a key is present when its field is not None."""

    ray_node: str | None = None  # the Ray node the trial ran on
    cores: list[int] | None = None  # the CPU cores its worker was pinned to
    resources: dict[str, float] | None = None  # what Ray reserved for it ({"CPU": 1.0, ...})
    # Wall-clock stamps (Unix seconds): worker_began and worker_ended on the worker, submitted and received by the
    # driver (benchmarks/stages.py reads the gaps between them).
    clock: dict[str, float] | None = None
    latency_cache: str | None = None  # "hit" when its latency came from the study's latency cache, else "miss"
    skipped_training: bool | None = None  # latency first stopped it before training (over budget or dominated)
    dominated_by: int | None = None  # the trained trial faster and smaller than its structure (search/gate.py)
    made_by: int | None = None  # the trial that made this model on its way to its own plan
    channels_before_pruning: int | None = None  # the trained student's channels, before pruning
    channels: int | None = None  # channels of the deployed model
    sparsity: float | None = None  # fraction of the student's weights that are zero
    machinery_failure: str | None = None  # the kind of machinery failure (worker_died, timeout, ...), if it was one
    machinery_attempts: list[str] | None = None  # earlier attempts the machinery lost: "kind: error" each
    # Training in rungs (cheap-then-full, search/rungs.py): the epochs a trial trained (distillation and pruning's
    # recovery together) out of those its plan asks for, and, for a plan stopped at a rung, the rung (0-based, an
    # index into search.early_stopping.rungs), the trial that dominates it (None: it cannot reach the accuracy
    # floor) and why, in words.
    epochs_used: int | None = None
    epochs_planned: int | None = None
    stopped_at_rung: int | None = None
    stopped_by: int | None = None
    stop_reason: str | None = None
    # space.pruning.from_trained: the trial whose trained student this plan pruned instead of training its own.
    student_from: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this release has no field for, kept as stored

    @classmethod
    def from_dict(cls, stored: Mapping[str, Any] | None) -> TrialInfo:
        """The info of a record, from its stored (version-1) dict or any mapping; an unknown key is kept in
        `extra`, so nothing a newer release or an extension wrote is lost on the way back."""
        if isinstance(stored, TrialInfo):
            return replace(stored, extra=dict(stored.extra))
        info = cls()
        for key, value in (stored or {}).items():
            info[key] = value
        return info

    def to_dict(self) -> dict[str, Any]:
        """The stored (version-1) form: the recorded fields and the extra keys, JSON values."""
        return dict(self.items())

    def where(self) -> TrialInfo:
        """Only where the trial ran (node, cores, resources): what a model made on its way shares with it."""
        return TrialInfo(ray_node=self.ray_node, cores=self.cores, resources=self.resources)

    def for_reuse(self) -> TrialInfo:
        """This info for a trial answered from this one's result: its stamps and `made_by` are not the new one's
        (a proposal answered from a model made on a trial's way is a trial of the budget like any other)."""
        return replace(self, clock=None, made_by=None, extra=dict(self.extra))

    # --- the dict it replaces, for callers not yet moved to the fields ---

    def __getitem__(self, key: str) -> Any:
        if key in _FIELD_SET:
            value = getattr(self, key)
            if value is None:
                raise KeyError(key)
            return value
        return self.extra[key]

    def __setitem__(self, key: str, value: Any) -> None:
        if key in _FIELD_SET:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __delitem__(self, key: str) -> None:
        if key in _FIELD_SET:
            if getattr(self, key) is None:
                raise KeyError(key)
            setattr(self, key, None)
        else:
            del self.extra[key]

    def __iter__(self) -> Iterator[str]:
        yield from (name for name in _FIELDS if getattr(self, name) is not None)
        yield from self.extra

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self.to_dict() == dict(other.items())

    __hash__ = None  # type: ignore[assignment]  # mutable, like the dict it replaces


_FIELDS = tuple(f.name for f in fields(TrialInfo) if f.name != "extra")  # declaration order: how to_dict lists them
_FIELD_SET = frozenset(_FIELDS)


@dataclass
class TrialRecord:
    """What slimsweep stores on one trial: the plan, its figures, or why it failed."""

    plan: dict[str, Any] = field(default_factory=dict)  # the plan's params, every knob (also the fixed ones)
    describe: str = ""  # the plan in words
    stages: dict[str, float] = field(default_factory=dict)  # seconds spent in each stage
    info: TrialInfo = field(default_factory=TrialInfo)  # how it ran; a dict is accepted and converted
    metrics: dict[str, float] = field(default_factory=dict)  # empty for a failed trial
    feasible: bool = False
    failure: str | None = None  # one line: the reason it failed
    traceback: str | None = None  # the failure's traceback, its last TRACEBACK_CHARS characters
    reuse_of: int | None = None  # the trial whose result this identical plan was answered from

    def __post_init__(self) -> None:
        if not isinstance(self.info, TrialInfo):
            self.info = TrialInfo.from_dict(self.info)

    @property
    def skipped_training(self) -> bool:
        """Whether latency first stopped this trial before training."""
        return bool(self.info.skipped_training)

    @property
    def made_by(self) -> int | None:
        """The trial that made this model on its way to its own plan (the trained student before pruning, the
        pruned model before quantization): measured at no training cost, so it is no trial of the budget."""
        return self.info.made_by

    @property
    def dominated_by(self) -> int | None:
        """The trained trial whose model is faster and smaller than this plan's structure (search/gate.py): the
        plan was not trained and is PRUNED."""
        return self.info.dominated_by

    def attrs(self) -> dict[str, Any]:
        """The record as Optuna user attributes (JSON values), with its version."""
        out: dict[str, Any] = {VERSION: RECORD_VERSION}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[KEYS[f.name]] = value
        out[KEYS["info"]] = self.info.to_dict()
        # A failure's text may quote a URL with its password (a device agent's address, a store's): never stored.
        if self.failure is not None:
            out[KEYS["failure"]] = mask_secrets(self.failure)[:FAILURE_CHARS]
        if self.traceback is not None:
            out[KEYS["traceback"]] = truncate(mask_secrets(self.traceback))
        return out

    @classmethod
    def from_attrs(cls, attrs: Mapping[str, Any], what: str) -> TrialRecord:
        """The record in a trial's user attributes (`what` names the trial); refuse one written by a newer release."""
        check_version(attrs.get(VERSION, RECORD_VERSION), what)
        return cls(**{name: attrs[key] for name, key in KEYS.items() if key in attrs})


def truncate(text: str, limit: int = TRACEBACK_CHARS) -> str:
    """The end of a long text (a traceback's last frames and its error), marked as cut."""
    return text if len(text) <= limit else "[... truncated ...]\n" + text[-limit:]


def check_version(version: Any, what: str) -> None:
    """Refuse a record (or study) stamped by a release newer than this one."""
    if not isinstance(version, int) or version > RECORD_VERSION:
        raise SlimsweepError(
            f"{what} was written by a newer slimsweep (record version {version!r}); this release reads record "
            f"versions up to {RECORD_VERSION}: upgrade slimsweep to read it"
        )
