"""examples/sharded_training.py runs as its docstring says (torchrun, 2 gloo processes on
loopback), trains, reports each table's split as DTensor makes it, and leaves a DCP
checkpoint. The losses themselves are not compared: 5 steps say little about convergence."""

import math
import re
import socket
import subprocess
import sys
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "sharded_training.py"
WORLD_SIZE = 2
TIMEOUT_S = 240
STEPS = 5  # the example's STEPS and DIM
DIM = 8


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _dtensor_split(rows, world_size):
    """Rows per rank as DTensor's Shard splits them (torch.chunk, trailing ranks empty),
    computed here rather than with mybag.distributed.shard_rows, so that a mistake there
    does not hide here."""
    held = [len(chunk) for chunk in torch.arange(rows).chunk(world_size)]
    return held + [0] * (world_size - len(held))


def test_example_trains_and_saves_a_checkpoint(tmp_path):
    checkpoint = tmp_path / "checkpoint"
    command = [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", f"--nproc-per-node={WORLD_SIZE}",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        str(EXAMPLE.relative_to(ROOT)), str(checkpoint),
    ]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                            timeout=TIMEOUT_S)
    output = result.stdout
    assert result.returncode == 0, f"{output}\n{result.stderr}"

    losses = re.findall(r"^step (\d+) loss (\S+)$", output, re.MULTILINE)
    assert [int(step) for step, _ in losses] == list(range(STEPS)), output
    assert all(math.isfinite(float(loss)) for _, loss in losses), output

    tables = {
        name: (int(rows), held)
        for name, rows, held in re.findall(
            r"^table (\w+): (\d+) rows, held per rank: (\[.*\])$", output, re.MULTILINE)
    }
    assert set(tables) == {"user", "history"}, output
    for name, (rows, held) in tables.items():
        assert held == str(_dtensor_split(rows, WORLD_SIZE)), f"{name}: {output}"

    assert f"checkpoint saved to {checkpoint}" in output, output
    # The whole tables and their optimizer state are in the checkpoint, not one rank's rows.
    saved = dcp.FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    for name, (rows, _) in tables.items():
        for key in (f"model.{name}.weight", f"optimizer.state.{name}.weight.sum"):
            assert key in saved, sorted(saved)
            assert list(saved[key].size) == [rows, DIM], (key, saved[key])
