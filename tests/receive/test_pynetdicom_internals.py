"""The check of the pynetdicom internals radnode patches (node.dicomnet.internals) and the patch
table that acts on it (node.dicomnet.patches): the installed pynetdicom passes, before and after
the patches are installed; a replaced or read internal that is gone or changed, or a version
outside the pinned range, is named in one error with the version found, what was expected and
what to do; only a difference in the PDU guard's internals stops the install, any other turns
the speed-ups off with one warning. Fast: no peers, no data."""

from __future__ import annotations

import subprocess
import sys

import pynetdicom
import pytest
from pynetdicom import fsm
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dul import DULServiceProvider

from node.dicomnet import internals
from node.dicomnet.internals import PynetdicomMismatch, check, replacing
from tests.support.harness import REPO

#: What the error must tell the user to run.
INSTALL = "pip install 'pynetdicom>=3.0,<3.1'"


def raised(monkeypatch: pytest.MonkeyPatch, version: str = "3.0.4") -> PynetdicomMismatch:
    monkeypatch.setattr(pynetdicom, "__version__", version)
    with pytest.raises(PynetdicomMismatch) as caught:
        check()
    return caught.value


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_the_installed_pynetdicom_passes_the_check() -> None:
    check()
    assert list(internals.mismatched_internals()) == []


def test_the_check_still_passes_once_every_patch_is_installed() -> None:
    """In a process of its own: the patches are process-wide. A patch keeps the function it
    replaced as ``__wrapped__``, so the check reads pynetdicom's code, not the patch's."""
    result = run_python(
        "import tempfile, pathlib\n"
        "from node.dicomnet import internals, patches\n"
        "from node.receive import pdata_stream\n"
        "assert patches.install(patches.SENDER)\n"
        "assert patches.install(patches.RECEIVER, 16384, pdata_stream.read)\n"
        "assert patches.install(patches.RECEIVER, 0, pdata_stream.read)\n"
        "import pynetdicom.fsm, inspect\n"
        "from pynetdicom.dimse import DIMSEServiceProvider\n"
        "assert pynetdicom.fsm.ACTIONS['DT-1'][1].__name__ == 'send_p_data'\n"
        "assert inspect.unwrap(DIMSEServiceProvider.send_msg).__module__ == 'pynetdicom.dimse'\n"
        "assert DIMSEServiceProvider.send_msg.__wrapped__ is inspect.unwrap(DIMSEServiceProvider.send_msg)\n"
        "internals.check()\n"
        "print('passed')\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "passed"


def test_the_error_is_a_runtime_error_naming_the_version_expected_and_the_install_command(
        monkeypatch: pytest.MonkeyPatch) -> None:
    error = raised(monkeypatch, "3.1.0")
    assert isinstance(error, RuntimeError)
    message = str(error)
    assert "pynetdicom 3.1.0 is installed" in message
    assert "expected version >=3.0,<3.1, found 3.1.0" in message
    assert f"Install pynetdicom>=3.0,<3.1 ({INSTALL})" in message
    assert "node/dicomnet/pdu_guard.py" in message  # what to update instead, when the internals still fit


@pytest.mark.parametrize("version", ["2.1.0", "3.1.0", "4.0.0", "unknown"])
def test_a_version_outside_3_0_raises(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    error = raised(monkeypatch, version)
    assert f"pynetdicom {version} is installed" in str(error)
    assert [m.expected for m in error.mismatches] == ["version >=3.0,<3.1"]


@pytest.mark.parametrize("version", ["3.0.0", "3.0.4", "3.0.12"])
def test_any_3_0_release_passes(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    monkeypatch.setattr(pynetdicom, "__version__", version)
    check()


def test_a_replaced_method_that_is_gone_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(DULServiceProvider, "_read_pdu_data")
    message = str(raised(monkeypatch))
    assert "pynetdicom 3.0.4 is installed" in message
    assert ("expected DULServiceProvider._read_pdu_data(self), found no such function "
            "(node/dicomnet/pdu_guard.py)") in message
    assert "or update node/dicomnet/pdu_guard.py for the new internals" in message
    assert INSTALL in message


def test_a_replaced_method_with_other_parameters_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def read_pdu_data(self: DULServiceProvider, timeout: float) -> None:
        pass

    monkeypatch.setattr(DULServiceProvider, "_read_pdu_data", read_pdu_data)
    message = str(raised(monkeypatch))
    assert ("expected DULServiceProvider._read_pdu_data(self), "
            "found DULServiceProvider._read_pdu_data(self, timeout)") in message


def test_a_patch_marked_as_replacing_the_method_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the patch table does: the check looks through the patch to pynetdicom's method."""

    def read_pdu_data(dul: DULServiceProvider, max_pdu: int) -> None:
        pass

    monkeypatch.setattr(DULServiceProvider, "_read_pdu_data",
                        replacing(DULServiceProvider._read_pdu_data, read_pdu_data))
    check()


def test_a_constructor_that_no_longer_sets_a_read_attribute_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self: DIMSEServiceProvider, assoc: object) -> None:
        self.messages = None  # type: ignore[attr-defined]  # not msg_queue, which the patches read

    monkeypatch.setattr(DIMSEServiceProvider, "__init__", init)
    message = str(raised(monkeypatch))
    assert "expected DIMSEServiceProvider.__init__ using msg_queue, found no msg_queue in its code" in message
    assert "node/receive/pdata_stream.py" in message


def test_a_reactor_that_no_longer_sleeps_through_time_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    def run_reactor(self: DULServiceProvider) -> None:
        self._kill_thread = True

    monkeypatch.setattr(DULServiceProvider, "run_reactor", run_reactor)
    assert "found no time, sleep in its code (node/dicomnet/reactor.py)" in str(raised(monkeypatch))


def test_a_missing_state_machine_action_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(fsm.ACTIONS, "DT-1")
    message = str(raised(monkeypatch))
    assert "expected fsm.ACTIONS['DT-1'] = (description, DT_1, 'Sta6'), found no such action" in message


def test_a_state_machine_action_with_another_function_or_next_state_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fsm.ACTIONS, "AR-7", ("Issue P-DATA-TF PDU", fsm.DT_1, "Sta8"))
    monkeypatch.setitem(fsm.ACTIONS, "DT-2", ("Send P-DATA indication primitive", fsm.DT_2, "Sta7"))
    error = raised(monkeypatch)
    assert [(m.expected, m.found) for m in error.mismatches] == [
        ("fsm.ACTIONS['AR-7'] = (description, AR_7, 'Sta8')", "(description, DT_1, 'Sta8')"),
        ("fsm.ACTIONS['DT-2'] = (description, DT_2, 'Sta6')", "(description, DT_2, 'Sta7')"),
    ]


def test_a_transition_to_another_action_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(fsm.TRANSITION_TABLE, ("Evt10", "Sta6"), "DT-9")
    assert "expected fsm.TRANSITION_TABLE[('Evt10', 'Sta6')] = 'DT-2', found 'DT-9'" in str(raised(monkeypatch))


def test_a_renamed_setting_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    from pynetdicom import _config

    monkeypatch.delattr(_config, "STORE_SEND_CHUNKED_DATASET")
    message = str(raised(monkeypatch))
    assert "expected setting pynetdicom._config.STORE_SEND_CHUNKED_DATASET, found none (node/deliver/cstore.py)" \
        in message


def test_every_difference_is_named_in_one_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(DULServiceProvider, "_decode_pdu")
    monkeypatch.delitem(fsm.ACTIONS, "AR-7")
    error = raised(monkeypatch, "3.2.1")
    assert len(error.mismatches) == 3
    assert "or update node/dicomnet/pdu_guard.py, node/dicomnet/sending.py for the new internals" in str(error)


def test_under_another_pynetdicom_version_the_receiver_keeps_only_the_guard_and_warns_once() -> None:
    """In a process of its own: what a pynetdicom security release 3.1 would meet."""
    result = run_python("import pynetdicom, inspect\n"
                        "pynetdicom.__version__ = '3.1.0'\n"
                        "from node import logs\n"
                        "logs.setup('info')\n"
                        "import node.receive.scp\n"
                        "from node.dicomnet import patches\n"
                        "from pynetdicom.dul import DULServiceProvider\n"
                        "from pynetdicom.dimse import DIMSEServiceProvider\n"
                        "assert not patches.install(patches.RECEIVER, 16384)\n"
                        "assert not patches.install(patches.SENDER)\n"
                        "assert DULServiceProvider._read_pdu_data.__module__ == 'node.dicomnet.pdu_guard'\n"
                        "assert DIMSEServiceProvider.send_msg.__module__ == 'pynetdicom.dimse'\n"
                        "print('stock')\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("stock")
    warnings = [line for line in result.stderr.splitlines() + result.stdout.splitlines() if "pynetdicom.stock" in line]
    assert len(warnings) == 1, result.stderr
    assert "expected version >=3.0,<3.1, found 3.1.0" in warnings[0]
    assert "stock pynetdicom without radnode's speed-ups" in warnings[0]


def test_a_guard_internal_that_differs_stops_the_receiver_at_import_with_the_error() -> None:
    result = run_python("from pynetdicom.dul import DULServiceProvider\n"
                        "del DULServiceProvider._decode_pdu\n"
                        "import node.receive.scp\n")
    assert result.returncode == 1
    assert "node.dicomnet.internals.PynetdicomMismatch: pynetdicom" in result.stderr
    assert "expected DULServiceProvider._decode_pdu(self, bytestream), found no such function" in result.stderr
    assert INSTALL in result.stderr


def test_every_target_of_the_patch_table_is_wrapped_once() -> None:
    from node.dicomnet import patches

    targets = [row.target for row in patches.TABLE]
    assert len(targets) == len(set(targets))
    assert [row.target for row in patches.TABLE if row.mandatory] == ["DULServiceProvider._read_pdu_data"]
    assert all(row.why and row.retired_by for row in patches.TABLE)
