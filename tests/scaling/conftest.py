"""Runs the sharded-command tests share. A module that uses them gives an ``argv`` fixture: ``argv(out, *extra)``,
the command line of its run writing into ``out``."""

from __future__ import annotations

import pytest

from counterfactory.cli.main import main


@pytest.fixture(scope="module")
def reference(argv, tmp_path_factory):
    """The folder of a one-process run."""
    out = tmp_path_factory.mktemp("one") / "run"
    assert main(argv(out)) == 0
    return out


@pytest.fixture(scope="module")
def shard0(argv, tmp_path_factory):
    """A folder where shard 0 of 2 finished and shard 1 has not started."""
    out = tmp_path_factory.mktemp("shard0") / "run"
    assert main(argv(out, "--num-shards", "2", "--shard", "0")) == 0
    return out
