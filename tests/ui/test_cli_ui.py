"""`counterfactory ui` on the command line: flags, the off-machine warning, a busy port."""

from __future__ import annotations

import socket

import pytest

from counterfactory.cli.main import main
from counterfactory.errors import InputError


def test_ui_is_a_command_with_local_defaults(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ui", "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    assert "--host" in text and "default 127.0.0.1" in text and "--port" in text and "--out" in text


def test_bad_port_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["ui", "--port", "0"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "--port='0': an integer" in err and "Traceback" not in err and err.count("\n") == 1


def test_other_host_warns_and_busy_port_names_the_port(tmp_path, capsys):
    pytest.importorskip("gradio", reason="the web app needs gradio: pip install -e '.[ui]'")
    from counterfactory.ui.app import launch

    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=rf"^port={port}: a free port on 0.0.0.0"):
            launch(out=tmp_path, host="0.0.0.0", port=port, block=False, quiet=True)
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err
    assert {p.name for p in tmp_path.iterdir()} <= {"cache"}  # nothing written but the app's own folder
