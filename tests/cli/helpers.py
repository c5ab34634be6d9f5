"""Shared checks for the command-line tests."""

from __future__ import annotations

from counterfactory.cli.main import main


def fails_one_line(capsys, argv: list[str], *words: str) -> str:
    """Run ``argv``; expect exit 2 with exactly one line on stderr (no traceback) containing ``words``."""
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors exit from parse_args
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]
