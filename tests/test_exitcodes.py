"""Every exit code has help text; describe() explains codes hpcflare does not own."""

import pytest

from hpcflare import errors
from hpcflare.exitcodes import HELP, ExitCode, describe, exit_for


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
    # srun reports a SIGKILLed rank as exit code 9: say so, not "the script called sys.exit"
    assert "signal 9 (SIGKILL)" in describe(9) and "OOM killer" in describe(9)
    assert "signal 15 (SIGTERM)" in describe(15)
    assert "REGISTRATION_TIMEOUT" in describe(11)  # hpcflare's own codes win


def test_submitits_last_time_limit_is_the_time_limit_code():
    from submitit.core.utils import UncompletedJobError

    code, reason = exit_for(UncompletedJobError("Job not requeued because: timed-out too many times."))
    assert code == ExitCode.TIME_LIMIT and reason.startswith(
        "Slurm's time limit, after the last requeue allowed"
    )
    assert "settings.max_requeues" in HELP[ExitCode.TIME_LIMIT] and "job resume" in HELP[ExitCode.TIME_LIMIT]


@pytest.mark.parametrize(
    "exc, code",
    [
        (errors.ConfigError("x"), ExitCode.CONFIG_ERROR),
        (errors.CertificateError("x"), ExitCode.CERTIFICATE_ERROR),
        (errors.RendezvousTimeoutError("x"), ExitCode.SERVER_LOST),
        (errors.StaleTaskError("x"), ExitCode.UPDATE_REJECTED),
        (errors.StreamTimeoutError("x"), ExitCode.TRANSPORT_ERROR),
        (errors.RoundFailedError("x"), ExitCode.ROUND_FAILED),
        (errors.RegistrationTimeoutError("x"), ExitCode.REGISTRATION_TIMEOUT),
        (errors.JobAbortedError("x"), ExitCode.ABORTED),
        (errors.PolicyRefusedError("x"), ExitCode.POLICY_REFUSED),
        (errors.RegistrationRefusedError("x"), ExitCode.AUTH_REFUSED),
    ],
)
def test_one_funnel_maps_every_error_family(exc, code):
    assert exit_for(exc) == (code, "x") and exit_for(exc, user_code=True) == (code, "x")


def test_user_code_failures_are_the_scripts_and_others_are_internal():
    assert exit_for(ValueError("bad"), user_code=True) == (ExitCode.TRAIN_SCRIPT_FAILED, "ValueError: bad")
    assert exit_for(ValueError("bad")) == (ExitCode.INTERNAL_ERROR, "ValueError: bad")
