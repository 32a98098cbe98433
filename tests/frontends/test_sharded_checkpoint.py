"""Checkpoints of sharded tables (mybag.distributed) with torch.distributed.checkpoint: model
and optimizer state (Adagrad, Adam) saved on 2 gloo ranks, resumed on 4 ranks and on 1, must
train on exactly as one process that never stopped. Resharding moves every table's rows (or
columns) and their optimizer state to other owners, so a shard lost, misplaced or not loaded
shows in the final weights. The workers are in sharded_checkpoint_workers.py."""

import functools
import pathlib

import distributed_training as training
import pytest
import sharded_checkpoint_workers as workers
import torch

SAVED_ON = 2
RESUMED_ON = [4, 1]


def _run(worker, out_dir, label, world_size, placement):
    """Runs ``worker`` on ``world_size`` ranks; on failure, the ranks' tracebacks are the
    message."""
    try:
        training.run_on_ranks(
            functools.partial(worker, world_size=world_size, placement=placement),
            out_dir, label, world_size,
        )
    except AssertionError as failure:
        reports = sorted(pathlib.Path(out_dir).glob(f"{label}-rank*.err"))
        details = "\n".join(f"{r.name}:\n{r.read_text()}" for r in reports)
        raise AssertionError(f"{failure}\n{details}") from None


@pytest.mark.parametrize("placement", ["row", "column"])
def test_checkpoint_resumes_on_other_world_sizes(placement, tmp_path):
    _run(workers.save, tmp_path, f"save{SAVED_ON}", SAVED_ON, placement)
    for world_size in RESUMED_ON:
        _run(workers.resume, tmp_path, f"resume{world_size}", world_size, placement)

    initial = workers.whole_state(workers.new_model())
    for optimizer in workers.OPTIMIZERS:
        expected = workers.single_process(optimizer)
        for name, value in expected.items():
            assert not torch.equal(value, initial[name]), f"{optimizer}: {name} did not train"
        for world_size in RESUMED_ON:
            resumed = torch.load(tmp_path / f"{optimizer}-resumed{world_size}.pt")
            assert resumed.keys() == expected.keys()
            for name, value in expected.items():
                torch.testing.assert_close(
                    resumed[name], value, rtol=1e-12, atol=1e-12,
                    msg=lambda m, o=optimizer, w=world_size, n=name:
                        f"{placement}, {o}, saved on {SAVED_ON} ranks, resumed on {w}: {n}: {m}",
                )
