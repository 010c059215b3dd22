"""The training engine's guarantees, proven on a toy task that belongs to no capability.

A two-layer perceptron regresses synthetic points through ``repvit.engine.loop.train``: random
augmentation per sample (``repvit.engine.data``), dropout from the global generator, SGD with momentum
and a warm-up schedule, an EMA of the weights, and a validation metric every rank scores its share of.
So every promise of the loop is checked apart from any data set or model of the library:

* a run killed with SIGKILL in the middle of an epoch and resumed ends bitwise where an uninterrupted
  run ends (weights, EMA, optimizer, schedule);
* two ranks with batch B step as one process with batch 2B (the global batch is what the loop
  accumulates: DDP averages the ranks' gradients);
* the EMA is the moving average of the weights after every update, computed here on its own;
* a rank that stalls makes the others fail after ``--dist-timeout`` instead of hanging;
* the validation metrics of ranks scoring their shares are those of one process scoring everything.

The loop has no option to accumulate micro-batches within a process: the global batch over ranks is
the only accumulation it does, and the second point is its test.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import pytest
import torch
from torch import nn

from repvit.engine.data import seeded_batches, stack_pairs
from repvit.engine.distributed import DistEnv, all_reduce, each_rank, shard
from repvit.engine.task import Optimization, Task, TrainBatches

REPO = Path(__file__).resolve().parents[1]
TRAIN, VAL = 24, 11      # 11 validation points: two ranks get unequal shares (6 and 5)
EVAL_BATCH = 2
SEED = 5


# --------------------------------------------------------------------------- the toy task
def points(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    y = (x @ torch.tensor([[1.0], [-2.0], [0.5], [0.0]]) + 0.3 * torch.sin(3 * x[:, :1]))
    return x, y + 0.05 * torch.randn(n, 1, generator=gen)


class Jittered:
    """Training points whose inputs get fresh noise every epoch, drawn from the engine's generator."""

    def __init__(self):
        self.x, self.y = points(TRAIN, seed=1)

    def __len__(self) -> int:
        return TRAIN

    def get(self, index: int, generator: torch.Generator):
        return self.x[index] + 0.1 * torch.randn(4, generator=generator), self.y[index]


def toy_task(env: DistEnv, *, batch_size: int, dropout: float = 0.2, ema_decay: Optional[float] = 0.8,
             stall: Optional[tuple] = None, snapshots: Optional[list] = None) -> Task:
    """The toy task for this rank. ``stall=(epoch, step, seconds, ranks)``: before that step those ranks
    print ``stalling`` and sleep. ``snapshots`` receives the weights every step starts from."""
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 1))
    train = seeded_batches(Jittered(), stack_pairs, seed=SEED, batch_size=batch_size, workers=0, env=env)
    val_x, val_y = points(VAL, seed=2)

    def batches(epoch: int, first_step: int):
        for step, batch in enumerate(train.batches(epoch, first_step), start=first_step):
            if stall is not None and (epoch, step) == stall[:2] and env.rank in stall[3]:
                print("stalling", flush=True)
                time.sleep(stall[2])
            yield batch

    def loss(model, batch, device):
        if snapshots is not None:
            bare = getattr(model, "module", model)
            snapshots.append({k: v.detach().clone() for k, v in bare.state_dict().items()})
        x, y = batch
        return nn.functional.mse_loss(model(x.to(device)), y.to(device))

    def optimization(model) -> Optimization:
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda update: min(1.0, (update + 1) / 4))
        return Optimization(optimizer, schedule, advance=lambda updates: schedule.step(), ema_decay=ema_decay)

    @torch.no_grad()
    def evaluate(model, env):
        """The MSE sums over the ranks' shares; the median absolute error needs every error, gathered."""
        was_training = model.training
        model.eval()

        def errors() -> list:   # (index, absolute error) of this rank's share
            mine, out = shard(range(VAL), env, block=EVAL_BATCH), []
            for start in range(0, len(mine), EVAL_BATCH):
                rows = mine[start:start + EVAL_BATCH]
                out += zip(rows, (model(val_x[rows]) - val_y[rows]).abs()[:, 0].tolist())
            return out
        shares = each_rank(errors, env)
        mine = [e for _, e in shares[env.rank]]
        sums = all_reduce(torch.tensor([sum(e * e for e in mine), len(mine)], dtype=torch.float64), env)
        everything = torch.tensor([e for _, e in sorted(p for share in shares for p in share)], dtype=torch.float64)
        model.train(was_training)
        return {"mse": float(sums[0] / sums[1]), "samples": int(sums[1]),
                "median_abs_error": float(everything.median())}

    def save(model, path, extra):
        from repvit.models.record import save_record
        return save_record(model, path, task="toy", config={"dropout": dropout}, extra=extra)

    return Task("toy", model, TrainBatches(batches, train.steps_per_epoch, train.num_images), loss, optimization,
                evaluate, primary="mse", save=save, lower_is_better=True)


def loop_options(output: Path, *, epochs: int = 3, batch_size: int = 4, resume: Optional[str] = None,
                 timeout_minutes: Optional[float] = None) -> argparse.Namespace:
    return argparse.Namespace(output=str(output), resume=resume, overwrite=False, epochs=epochs,
                              batch_size=batch_size, seed=SEED, device="cpu", threads=1, log_interval=1,
                              sync_bn=False, stop_after_epoch=None, eval_interval=1, tensorboard=False,
                              dist_timeout=timeout_minutes)


def run_toy(output, *, batch_size: int = 4, resume: Optional[str] = None, timeout_minutes: Optional[float] = None,
            **task_options) -> dict:
    """One training run of the toy task (in this process, or as one rank of a process group)."""
    from repvit.engine.loop import train
    cfg = loop_options(Path(output), batch_size=batch_size, resume=resume, timeout_minutes=timeout_minutes)
    return train(lambda env, log, resume: toy_task(env, batch_size=batch_size, **task_options), cfg,
                 config={"batch_size": batch_size}, command="toy")


def saved(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_bitwise(a: dict, b: dict) -> None:
    for part in ("model", "model_ema"):
        assert a[part].keys() == b[part].keys()
        for key in a[part]:
            assert torch.equal(a[part][key], b[part][key]), (part, key)
    for index, state in a["optimizer"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][index][key]), ("optimizer", index, key)
    assert a["scheduler"] == b["scheduler"]
    assert (a["epoch"], a["num_updates"]) == (b["epoch"], b["num_updates"])


# --------------------------------------------------------------------------- one process
@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> tuple[Path, list]:
    """Three epochs of 6 steps in one go, with the weights every step started from."""
    out, snapshots = tmp_path_factory.mktemp("uninterrupted"), []
    assert run_toy(out, snapshots=snapshots)["interrupted"] is False
    return out, snapshots


def test_sigkill_mid_epoch_then_resume_is_bitwise(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    out = tmp_path / "killed"
    code = f"from tests.test_engine import run_toy; run_toy({str(out)!r}, stall=(1, 3, 120, (0,)))"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:   # epoch 1 saved, epoch 2 under way: kill it as a crash would
            if line.strip() == "stalling":
                proc.kill()
                break
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == -signal.SIGKILL, stderr[-3000:]
    checkpoint = saved(out / "last.pth")
    assert (checkpoint["epoch"], checkpoint["next_step"], checkpoint["num_updates"]) == (1, 0, 6)
    assert run_toy(out, resume="auto")["interrupted"] is False
    assert "resumed from" in (out / "train.log").read_text()
    final = saved(out / "last.pth")
    assert_bitwise(final, saved(reference / "last.pth"))
    moved = [k for k, v in checkpoint["model"].items() if not torch.equal(v, final["model"][k])]
    assert len(moved) == len(final["model"])   # the resumed epochs trained every tensor
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]


def test_ema_is_the_moving_average_of_the_weights_after_every_update(uninterrupted):
    """timm's ``ModelEmaV3`` rule, which the loop promises: the first update copies the weights, every
    later one moves the average ``1 - decay`` of the way to them."""
    out, snapshots = uninterrupted
    final = saved(out / "last.pth")
    after_updates = snapshots[1:] + [final["model"]]   # each step starts from the previous update's weights
    assert len(after_updates) == final["num_updates"] == 18
    ema = {k: v.double() for k, v in after_updates[0].items()}
    for weights in after_updates[1:]:
        ema = {k: 0.8 * ema[k] + 0.2 * weights[k].double() for k in ema}
    for key, value in final["model_ema"].items():
        torch.testing.assert_close(value.double(), ema[key], rtol=1e-6, atol=1e-7)
        assert not torch.allclose(value, final["model"][key])   # not the weights themselves
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    task = toy_task(DistEnv(), batch_size=4)
    task.model.load_state_dict(final["model_ema"])
    assert rows[-1]["val_mse_ema"] == task.evaluate(task.model, DistEnv())["mse"]   # the EMA is what was scored


# --------------------------------------------------------------------------- two ranks (gloo on CPU)
def rank_main(rank: int, runs: list, work: str) -> None:
    """One torchrun-like rank: the toy task's ``runs`` one after the other, each ``(name, port, options)``
    in a process group of its own; records what each returned or raised, and how long it took."""
    torch.set_num_threads(1)
    for name, port, options in runs:
        ready = [Path(work) / f"{name}-ready{r}" for r in range(2)]   # start together: the group's set-up
        ready[rank].touch()                                           # waits no longer than its timeout
        while not all(path.is_file() for path in ready):
            time.sleep(0.05)
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                          LOCAL_RANK=str(rank))
        start = time.monotonic()
        try:
            outcome = {"result": run_toy(Path(work) / name, **options)}
        except Exception as err:   # noqa: BLE001 - the test reads it
            outcome = {"error": f"{type(err).__name__}: {err}"}
        outcome["seconds"] = time.monotonic() - start
        path = Path(work) / f"{name}-rank{rank}.pkl"
        path.with_suffix(".tmp").write_bytes(pickle.dumps(outcome))
        path.with_suffix(".tmp").rename(path)   # whole, when the test sees it


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> tuple[Path, dict]:
    """Two processes (one start-up for both runs): ``ddp``, three epochs of 6 steps with batch 2 per rank
    and no dropout (each rank would draw its own); then ``stalled``, where rank 1 stops for a minute before
    its second step under a 6 s collective timeout. Rank 1 is killed once rank 0 has reported."""
    import torch.multiprocessing as mp
    work = tmp_path_factory.mktemp("ranks")
    plain = {"batch_size": 2, "dropout": 0.0}
    ddp_port, stalled_port = free_ports(2)
    runs = [("ddp", ddp_port, plain),
            ("stalled", stalled_port, {**plain, "timeout_minutes": 0.1, "stall": (0, 1, 60, (1,))})]
    wanted = [work / name for name in ("ddp-rank0.pkl", "ddp-rank1.pkl", "stalled-rank0.pkl")]
    context = mp.spawn(rank_main, args=(runs, str(work)), nprocs=2, join=False)
    start = time.monotonic()
    try:
        while not all(path.is_file() for path in wanted):
            if time.monotonic() - start > 180 or not any(p.is_alive() for p in context.processes):
                pytest.fail(f"the ranks did not report ({', '.join(p.name for p in wanted if not p.is_file())})")
            time.sleep(0.2)
    finally:
        for process in context.processes:
            process.kill()
            process.join()
    outcomes = {path.stem: pickle.loads(path.read_bytes()) for path in wanted}
    assert all("result" in outcomes[f"ddp-rank{r}"] for r in range(2)), outcomes
    return work, outcomes


def test_two_ranks_step_as_one_process_with_the_global_batch(ranks, tmp_path):
    ddp, alone = ranks[0] / "ddp", tmp_path / "alone"
    run_toy(alone, batch_size=4, dropout=0.0)
    together, one = saved(ddp / "last.pth"), saved(alone / "last.pth")
    assert together["num_updates"] == one["num_updates"] == 18 and len(together["rng"]) == 2
    for part in ("model", "model_ema"):
        for key, value in one[part].items():   # the same updates, summed in another order
            torch.testing.assert_close(together[part][key], value, rtol=1e-5, atol=1e-6)
    torch.manual_seed(SEED)   # the initial weights, as the loop seeds them
    initial = toy_task(DistEnv(), batch_size=4, dropout=0.0).model.state_dict()
    assert all(not torch.allclose(one["model"][k], initial[k], atol=1e-3) for k in initial)   # they trained
    rows = {name: [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            for name, run in (("ranks", ddp), ("alone", alone))}
    for a, b in zip(rows["ranks"], rows["alone"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)


def test_ranks_scoring_their_shares_give_the_single_process_metrics(ranks):
    ddp = ranks[0] / "ddp"
    final = saved(ddp / "last.pth")
    row = [json.loads(line) for line in (ddp / "metrics.jsonl").read_text().splitlines()][-1]
    task = toy_task(DistEnv(), batch_size=2, dropout=0.0)
    task.model.load_state_dict(final["model"])
    alone = task.evaluate(task.model, DistEnv())
    assert row["val_samples"] == alone["samples"] == VAL   # every point once, nothing padded or dropped
    assert row["val_mse"] == pytest.approx(alone["mse"], rel=1e-12)
    assert row["val_median_abs_error"] == alone["median_abs_error"]
    assert [shard(range(VAL), DistEnv(rank=r, world_size=2), block=EVAL_BATCH) for r in range(2)] == \
        [[0, 1, 4, 5, 8, 9], [2, 3, 6, 7, 10]]   # the shares really were unequal


def test_a_stalled_rank_makes_the_others_fail_after_the_timeout(ranks):
    """Rank 0 waits at its second step's collective for the configured 6 s, then fails with a timeout."""
    work, outcomes = ranks
    rank0 = outcomes["stalled-rank0"]
    assert "error" in rank0, rank0
    assert re.search(r"timed? ?out", rank0["error"], re.IGNORECASE) and "6000" in rank0["error"], rank0["error"]
    assert 6 <= rank0["seconds"] < 20
    log = (work / "stalled" / "train.log").read_text()
    assert "epoch 1/3 step 1/6" in log and "step 2/6" not in log   # it failed where rank 1 stalled
