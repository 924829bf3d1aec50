"""Whether a study's contrasts are inputs the model was validated on, and what the reader is told.

A volume in a TID 1500 SR reads as a measurement whatever the model's record on that input. So
the contrasts segmented are the largest set the model folder declares (``[[validated]]``) with a
held-out median tumor-core Dice at or above the site's floor (``options.min_validated_dice``),
the other contrasts left out with that reason. When no such set is among the contrasts that
arrived, the study is not measured: the SR says why and what to send, and no SEG or volume is
written, unless the site asks for the result anyway (``options.deliver_unvalidated``), in which
case every object says UNVALIDATED.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from pipelines.tumor.contrasts import CHANNELS
from pipelines.tumor.params import Validated

#: How reports name contrasts.
DISPLAY = {"t1c": "T1c", "t1": "T1", "t2": "T2", "flair": "FLAIR"}
#: The word on every object of a result delivered outside the validated inputs.
UNVALIDATED = "UNVALIDATED"
#: Why a contrast that arrived was not used although it could have been.
NOT_VALIDATED_WITH = "not used: the model is validated without it"


@dataclass(frozen=True)
class InputChoice:
    """The contrasts to segment and whether the result is a measurement."""

    roles: tuple[str, ...]
    #: "validated": a measurement; "unvalidated": delivered marked; "not-measured": SR only
    status: Literal["validated", "unvalidated", "not-measured"]
    #: the reader's sentence for any status but "validated" (the SR, the key images, the summary)
    statement: str = ""
    #: contrasts that arrived and were left out to reach a validated set, with why
    left_out: Mapping[str, str] | None = None
    #: what the folder declares for the set segmented, if anything
    record: Validated | None = None

    def parameter(self) -> tuple[tuple[str, str], ...]:
        """The algorithm parameter every object carries: the warning, or the record it rests on."""
        if self.statement:
            return (("validation", self.statement),)
        if self.record is not None:
            return (("validation", f"validated input: held-out Dice {self.record.dice:.3g} on "
                                   f"{_scans(self.record.scans)} ({self.record.data})"),)
        return ()


def named(roles: Collection[str], joiner: str = " + ") -> str:
    """"T1c + FLAIR": a contrast set as the reports name it, in channel order."""
    return joiner.join(DISPLAY[role] for role in CHANNELS if role in roles)


def choose_inputs(present: Sequence[str], validated: Mapping[frozenset[str], Validated] | None,
                  floor: float, deliver_unvalidated: bool) -> InputChoice:
    """The largest validated set among ``present`` (ties: the higher Dice), else the study as it
    came, unvalidated or not measured. ``validated`` None (a MONAI bundle): as it came, validated."""
    if validated is None:
        return InputChoice(tuple(present), "validated")
    usable = [entry for contrasts, entry in validated.items() if entry.dice >= floor and contrasts <= set(present)]
    if usable:
        best = max(usable, key=lambda entry: (len(entry.contrasts), entry.dice))
        roles = tuple(role for role in present if role in best.contrasts)
        return InputChoice(roles, "validated",
                           left_out={role: NOT_VALIDATED_WITH for role in present if role not in roles}, record=best)
    record = validated.get(frozenset(present))
    measured = (f"held-out Dice {record.dice:.3g} on {_scans(record.scans)}" if record is not None
                else "no held-out measurement")
    why = f"{named(present)} is outside the model's validated inputs ({measured}){_advice(present, validated, floor)}"
    if deliver_unvalidated:
        return InputChoice(tuple(present), "unvalidated", f"{UNVALIDATED}: {why}", record=record)
    return InputChoice(tuple(present), "not-measured", f"not measured: {why}", record=record)


def _advice(present: Sequence[str], validated: Mapping[frozenset[str], Validated], floor: float) -> str:
    """"; send FLAIR": the fewest contrasts that would complete a validated set (ties: the higher Dice)."""
    targets = [entry for entry in validated.values() if entry.dice >= floor]
    if not targets:
        return "; the model folder declares no input set validated at this site's floor"
    best = min(targets, key=lambda entry: (len(set(entry.contrasts) - set(present)), -entry.dice))
    return f"; send {named(set(best.contrasts) - set(present), ' and ')}"


def _scans(count: int) -> str:
    return f"{count} scan" if count == 1 else f"{count} scans"
