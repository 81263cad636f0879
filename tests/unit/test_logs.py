"""Structured logging: JSON/console output, bound call ids, stdlib routing, level filter."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import structlog

from gateway.config import load_settings
from gateway.logs import JsonLine, UtcStamp, bind_call, configure_logging, get_logger


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def json_lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_line_carries_bound_call_id() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out, cache_loggers=False)
    log = get_logger("gateway.test")
    with bind_call("a84b4c76e66710"):
        log.info("invite received", method="INVITE")
    log.info("after the call")
    inside, after = json_lines(out)
    assert inside["event"] == "invite received"
    assert inside["call_id"] == "a84b4c76e66710"
    assert inside["method"] == "INVITE"
    assert inside["level"] == "info"
    assert inside["logger"] == "gateway.test"
    assert "call_id" not in after


def test_timestamp_is_iso_utc() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out, cache_loggers=False)
    get_logger().info("tick")
    [line] = json_lines(out)
    stamp = datetime.fromisoformat(str(line["timestamp"]))
    assert stamp.utcoffset() == timedelta(0)


def test_the_timestamp_is_the_clock_now_with_microseconds_even_on_a_whole_second(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stamp = UtcStamp()
    clock = iter([1_796_332_194_211_151_999, 1_796_332_194_999_999_000, 1_796_332_195_000_000_000])
    monkeypatch.setattr("gateway.logs.time.time_ns", lambda: next(clock))
    texts = [str(stamp(None, "info", {})["timestamp"]) for _ in range(3)]
    assert texts == [
        "2026-12-03T21:09:54.211151Z",
        "2026-12-03T21:09:54.999999Z",
        "2026-12-03T21:09:55.000000Z",  # a new second: the date text is made again
    ]
    monkeypatch.undo()
    before = datetime.now(tz=UTC)
    now = datetime.fromisoformat(str(UtcStamp()(None, "info", {})["timestamp"]))
    assert before <= now <= datetime.now(tz=UTC)


class _Custom:
    def __structlog__(self) -> str:
        return "custom"


def test_a_json_line_is_what_json_dumps_with_structlogs_fallback_makes() -> None:
    event = {
        "event": "call_end",
        "n": 3,
        "ratio": 0.5,
        "ok": True,
        "none": None,
        "list": ["a", 1],
        "text": 'caf\u00e9 "quoted"',
        "address": ("udp", "127.0.0.1", 5060),
        "object": object,
        "custom": _Custom(),
    }
    reference = structlog.processors.JSONRenderer()(None, "info", dict(event))
    assert JsonLine()(None, "info", dict(event)) == reference
    assert json.loads(reference)["custom"] == "custom"


def test_stdlib_logging_goes_through_the_same_processors() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out, cache_loggers=False)
    with bind_call("call-1", leg="b"):
        logging.getLogger("some.library").warning("disk %s", "full")
    [line] = json_lines(out)
    assert line["event"] == "disk full"
    assert line["call_id"] == "call-1"
    assert line["leg"] == "b"
    assert line["level"] == "warning"
    assert line["logger"] == "some.library"
    assert "timestamp" in line


def test_disabled_level_is_filtered_before_any_processing() -> None:
    out = io.StringIO()
    configure_logging("json", "WARNING", stream=out, cache_loggers=False)
    log = get_logger("gateway.test")
    assert not log.is_enabled_for(logging.INFO)
    assert log.is_enabled_for(logging.WARNING)
    log.debug("hidden")
    log.info("hidden")
    logging.getLogger("lib").info("hidden")
    log.warning("shown")
    assert [line["event"] for line in json_lines(out)] == ["shown"]


def test_exception_rendered_in_json() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out, cache_loggers=False)
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        get_logger().exception("failed")
    [line] = json_lines(out)
    assert "boom" in json.dumps(line["exception"])


def test_console_format_shows_call_id() -> None:
    out = io.StringIO()
    configure_logging("console", "debug", stream=out, cache_loggers=False)
    with bind_call("xyz-123"):
        get_logger().debug("ringing")
    text = out.getvalue()
    assert "ringing" in text
    assert "call_id=xyz-123" in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal


def test_default_stream_is_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("json", "INFO", cache_loggers=False)
    with bind_call("c-9"):
        get_logger().info("hello")
    captured = capsys.readouterr()
    assert json.loads(captured.err.splitlines()[-1])["call_id"] == "c-9"


def test_reconfiguring_replaces_the_handler() -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "INFO", stream=first, cache_loggers=False)
    configure_logging("json", "INFO", stream=second, cache_loggers=False)
    get_logger().info("once")
    assert first.getvalue() == ""
    assert len(json_lines(second)) == 1


def test_call_ids_do_not_leak_between_tasks() -> None:
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out, cache_loggers=False)
    log = get_logger()

    async def handle(call_id: str) -> None:
        with bind_call(call_id):
            await asyncio.sleep(0)
            log.info("handled")

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(handle("one"), name="call-one")
            group.create_task(handle("two"), name="call-two")

    asyncio.run(main())
    assert sorted(str(line["call_id"]) for line in json_lines(out)) == ["one", "two"]


def test_bad_arguments_refused() -> None:
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", "INFO")
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", "LOUD")


# --- settings (they choose the log format and level) ------------------------------------


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DIALPLAN", "DATA_DIR", "LOG_FORMAT", "LOG_LEVEL", "USE_UVLOOP"):
        monkeypatch.delenv(f"GATEWAY_{name}", raising=False)
    settings = load_settings()
    assert str(settings.dialplan) == "dialplans/example.yaml"
    assert str(settings.data_dir) == "data"
    assert settings.log_format == "auto"  # console on a terminal, JSON otherwise
    assert settings.log_level == "INFO"
    assert settings.use_uvloop is True


def test_settings_from_environment_and_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "Console")
    monkeypatch.setenv("GATEWAY_LOG_LEVEL", "debug")
    monkeypatch.setenv("GATEWAY_USE_UVLOOP", "false")
    monkeypatch.setenv("GATEWAY_DIALPLAN", "/etc/gateway/site.yaml")
    settings = load_settings(data_dir="/var/lib/gateway")
    assert settings.log_format == "console"
    assert settings.log_level == "DEBUG"
    assert settings.use_uvloop is False
    assert str(settings.dialplan) == "/etc/gateway/site.yaml"
    assert str(settings.data_dir) == "/var/lib/gateway"
    assert load_settings(log_level="ERROR").log_level == "ERROR"


def test_settings_refuse_bad_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="GATEWAY_LOG_FORMAT='xml': expected"):
        load_settings()
    with pytest.raises(ValueError, match="log_level"):
        load_settings(log_format="json", log_level="LOUD")


def test_our_lines_and_library_lines_from_two_threads_stay_whole_lines() -> None:
    # our lines skip the stdlib (issue 10) but share its handler's stream and lock
    out = io.StringIO()
    configure_logging("json", "INFO", stream=out, cache_loggers=False)
    ours = get_logger()  # unnamed: the calling module, as the stdlib factory named it

    def worker() -> None:
        for index in range(300):
            logging.getLogger("some.library").warning("library %d", index)

    thread = threading.Thread(target=worker)
    thread.start()
    for index in range(300):
        ours.info("ours", index=index)
    thread.join()
    lines = json_lines(out)  # every line parses: none was cut into by the other thread
    assert len(lines) == 600
    mine = [line for line in lines if line["event"] == "ours"]
    assert [line["index"] for line in mine] == list(range(300))
    assert {line["logger"] for line in mine} == {__name__}
    assert sum(1 for line in lines if line["logger"] == "some.library") == 300
