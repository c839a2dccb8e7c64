"""Every exit code has help text; describe() explains codes hpcflare does not own."""

from hpcflare.exitcodes import HELP, ExitCode, describe


def test_every_code_has_help_text():
    missing = [c.name for c in ExitCode if not HELP.get(c, "").strip()]
    assert missing == []
    assert set(HELP) == set(ExitCode)


def test_codes_are_unique_and_fit_a_process_exit_status():
    values = [int(c) for c in ExitCode]
    assert len(values) == len(set(values)) and all(0 <= v < 126 for v in values)


def test_describe_signals_and_unknown_codes():
    assert describe(-9).startswith("killed by signal 9")
    assert describe(137).startswith("killed by signal 9")
    assert "ROUND_FAILED" in describe(12)
    assert "unknown exit code 77" in describe(77)
