"""Command-line values out of range are usage errors (exit status 2, one line) before any work, never a traceback later."""

from __future__ import annotations

import pytest

from cxrkit.cli import main


@pytest.mark.parametrize("argv, message", [
    # The port was accepted, the model loaded and "serving on http://127.0.0.1:99999/" printed; then the bind failed with a
    # traceback and "unexpected OverflowError" (exit 3).
    (["serve", "RUN", "--port", "99999"], "argument --port: 99999 is outside 1-65535"),
    (["serve", "RUN", "--port", "0"], "argument --port: 0 is outside 1-65535"),
    # Was "error: cannot convert float NaN to integer".
    (["serve", "RUN", "--max-upload-mb", "nan"], "argument --max-upload-mb: nan is outside 0.001-1024"),
    (["serve", "RUN", "--max-upload-mb", "-1"], "argument --max-upload-mb: -1 is outside 0.001-1024"),
    (["serve", "RUN", "--max-upload-mb", "lots"], "argument --max-upload-mb: 'lots' is not a number"),
    # Was "unexpected error: missing ), unterminated subpattern at position 0 (a bug in cxrkit)", exit 3.
    (["audit", "DATA", "--group-pattern", "("], "argument --group-pattern: '(' is not a regular expression "
                                                "(missing ), unterminated subpattern at position 0)"),
    (["audit", "DATA", "--seed", "-1"], "argument --seed: -1 is outside 0-4294967295"),
])
def test_out_of_range_flags_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.splitlines()[-1] == f"cxrkit {argv[0]}: error: {message}"
    assert "Traceback" not in err
