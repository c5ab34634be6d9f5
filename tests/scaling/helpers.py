"""Helpers of the scaling tests.

:func:`run_ranks` runs a command line on N CPU processes joined over gloo, as ``accelerate launch --multi_gpu
--num_processes N`` does on a CPU-only machine, but forked from the test process (no second interpreter start-up:
each rank is ready in well under a second). The others read and copy the folders of sharded runs.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
import traceback
from pathlib import Path

from tests.cli.helpers import fails_one_line

SHARD_BOOKKEEPING = ("manifest-shard", "shards.json")  # what only a sharded run writes (name prefixes)


def file_hashes(root: Path, pattern: str = "*", skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file under ``root`` whose name matches ``pattern``, by path relative to ``root``; the shards'
    own bookkeeping and the file names in ``skip`` aside."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob(pattern)) if p.is_file() and not p.name.startswith(SHARD_BOOKKEEPING)
            and p.name not in skip}


def folder_bytes(root: Path) -> dict[Path, bytes]:
    """Every file under ``root`` with its bytes (to check that a refused command changed nothing)."""
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def copy_run(folder: Path, tmp_path: Path) -> Path:
    """A copy of a run folder (a module-scoped one that the test may change) as ``tmp_path/run``."""
    return Path(shutil.copytree(folder, tmp_path / "run"))


def last_json(capsys) -> dict:
    """The last line the command printed, read as JSON (the summary of a run)."""
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def refused_and_untouched(capsys, argv: list[str], out: Path, *words: str) -> None:
    """``counterfactory <argv>`` fails with one line holding ``words`` and leaves every file of ``out`` as it was."""
    before = folder_bytes(out)
    fails_one_line(capsys, argv, *words)
    assert folder_bytes(out) == before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, argv: list[str], env: dict) -> None:
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
                       "ACCELERATE_USE_CPU": "true", **env})
    code = 1
    try:
        import torch
        from accelerate.state import AcceleratorState

        torch.set_num_threads(1)
        AcceleratorState._reset_state(reset_partial_state=True)  # the forked copy of the parent's state
        from counterfactory.cli.main import main

        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        try:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
        except Exception:  # noqa: BLE001 - best effort on the way out
            pass
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def run_ranks(argv: list[str], world: int = 2, timeout: float = 120, env: dict | None = None) -> dict[int, int]:
    """Exit status of each rank of ``counterfactory <argv>`` on ``world`` processes (a rank that does not report
    within ``timeout`` seconds is killed and gets None)."""
    import time

    ctx = mp.get_context("fork")
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, argv, env or {})) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    codes: dict[int, int | None] = {}
    for r, p in enumerate(procs):
        p.join(timeout=max(deadline - time.monotonic(), 0.1))
        if p.is_alive():
            p.kill()
            p.join()
            codes[r] = None
        else:
            codes[r] = p.exitcode
    return codes
