"""gRPC failures and the live event stream of `tokengate ctl`, with a fake connection: exit
codes by status class, one-line messages, `--count` and Ctrl-C ending the tail."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import grpc
import pytest

from extproc.control import control_pb2 as pb
from extproc.ctl import commands, connection
from extproc.ctl import main as ctl


class _Failure(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "exit_code"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 1),
        (grpc.StatusCode.NOT_FOUND, 1),
        (grpc.StatusCode.FAILED_PRECONDITION, 1),
        (grpc.StatusCode.INTERNAL, 1),
        (grpc.StatusCode.UNAUTHENTICATED, 3),
        (grpc.StatusCode.PERMISSION_DENIED, 3),
        (grpc.StatusCode.UNAVAILABLE, 4),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 4),
    ],
)
def test_grpc_status_codes_map_to_exit_codes(code: grpc.StatusCode, exit_code: int) -> None:
    error = connection.rpc_failure(
        _Failure(code, "line one\nline two"), server="h:1", timeout_s=2, sent_token=True
    )
    assert error.exit_code == exit_code
    assert "\n" not in str(error)


def _fake_events(monkeypatch: pytest.MonkeyPatch, stream: Iterator[pb.Event]) -> None:
    class Api:
        def WatchEvents(self, request: pb.WatchEventsRequest, **_: Any) -> Iterator[pb.Event]:
            assert list(request.kinds) == ["refusal"]
            return stream

    @contextmanager
    def connect(args: Any) -> Iterator[connection.Connection]:
        api: Any = Api()
        yield connection.Connection(api=api, server="fake:1", metadata=(), timeout_s=1)

    monkeypatch.setattr(commands, "connect", connect)


def _refusals(then: BaseException | None) -> Iterator[pb.Event]:
    for n in range(2):
        yield pb.Event(at=1_700_000_000 + n, kind="refusal", limit="tpm", message=f"no {n}")
    if then is not None:
        raise then


def test_events_ctrl_c_exits_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_events(monkeypatch, _refusals(then=KeyboardInterrupt()))
    assert ctl.main(["events", "--kind", "refusal", "-o", "json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["message"] for line in lines] == ["no 0", "no 1"]


def test_events_count_stops_the_tail(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_events(monkeypatch, _refusals(then=AssertionError("read past --count")))
    assert ctl.main(["events", "--kind", "refusal", "--count", "2"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_events_stream_closed_or_failed_exits_4(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _fake_events(monkeypatch, _refusals(then=None))
    assert ctl.main(["events", "--kind", "refusal"]) == 4
    assert capsys.readouterr().err == "tokengate ctl: the server closed the event stream\n"
    failure = _Failure(grpc.StatusCode.UNAVAILABLE, "socket closed")
    _fake_events(monkeypatch, _refusals(then=failure))
    assert ctl.main(["events", "--kind", "refusal"]) == 4
    assert capsys.readouterr().err == (
        "tokengate ctl: the control API at fake:1 is unavailable: socket closed\n"
    )
