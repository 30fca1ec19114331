"""What a reconnecting watch reports: the difference, and nothing removed that the caller
chose to keep for now (a controller's watch after the controller restarted)."""

from __future__ import annotations

from corral.core.registry import SYNCED, InstanceRecord, InstanceState, RegistryEvent
from corral.core.spec import ModelKind
from corral.registry.resync import Reported


def rec(instance_id: str) -> InstanceRecord:
    return InstanceRecord(instance_id, "m", ModelKind.LLM, "fake", "w1", InstanceState.READY)


def test_a_resync_reports_puts_and_removals_of_what_vanished() -> None:
    reported = Reported()
    assert reported.resync([rec("a"), rec("b")]) == [RegistryEvent(rec("a")), RegistryEvent(rec("b")), SYNCED]
    assert reported.vanished([rec("b")]) == ["a"]
    assert reported.resync([rec("b")]) == [RegistryEvent(rec("b")), RegistryEvent(rec("a"), removed=True), SYNCED]
    assert reported.removed("a") is None  # already reported removed


def test_kept_records_are_not_removed_until_said_so() -> None:
    reported = Reported()
    reported.resync([rec("a"), rec("b")])
    assert reported.resync([], keep=frozenset({"a"})) == [RegistryEvent(rec("b"), removed=True), SYNCED]
    assert reported.vanished([]) == ["a"]  # still reported: it vanishes again on the next resync
    assert reported.resync([rec("a")]) == [RegistryEvent(rec("a")), SYNCED]  # back: nothing to remove
    reported.resync([], keep=frozenset({"a"}))
    assert reported.removed("a") == RegistryEvent(rec("a"), removed=True)  # its hold ran out
