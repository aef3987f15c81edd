"""The supervisor's restart arithmetic: when a dead worker is respawned and how its death is
labelled on `tokengate_worker_restarts_total`."""

from __future__ import annotations

from types import SimpleNamespace

from extproc.serve.settings import ServeSettings
from extproc.serve.supervisor import RestartPolicy, reason_of


def test_a_one_off_crash_is_respawned_at_once_then_the_delay_doubles_to_its_cap() -> None:
    policy = RestartPolicy(backoff_s=0.5, backoff_max_s=3.0)
    assert [policy.delay(n) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 3.0, 3.0]


def test_defaults_and_flags_when_the_settings_carry_them() -> None:
    assert RestartPolicy.from_settings(ServeSettings()) == RestartPolicy()
    given = SimpleNamespace(max_restarts=2, restart_window_s=10.0)
    policy = RestartPolicy.from_settings(given)
    assert (policy.max_restarts, policy.window_s) == (2, 10.0)


def test_the_reason_names_the_signal_or_the_exit_code() -> None:
    assert reason_of(-9, timed_out=False) == "SIGKILL"
    assert reason_of(-11, timed_out=False) == "SIGSEGV"
    assert reason_of(2, timed_out=False) == "exit_2"
    assert reason_of(0, timed_out=False) == "exit_0"
    assert reason_of(-9, timed_out=True) == "start_timeout"
    assert reason_of(-200, timed_out=False) == "signal_200"
