"""The training loop: Adam on the five losses, validation, checkpoints, CSV log, exact resume.

Outputs in ``out_dir``: ``last.pt`` (every ``checkpoint_every`` steps and at the end),
``best.pt`` (best validation score: mean Dice over labelled pairs, else mean NCC) and
``log.csv`` (one ``train`` row per step, one ``val`` row per validation). Checkpoints use the
package format (:mod:`dccnn_deploy.checkpoint`) with the training state: optimizer, grad
scaler, step, RNG states (tensors / plain values), sampler state, best score and the resolved
``train_config``. Training pairs depend only on ``(seed, rank, step)``, so a resumed run
reproduces an uninterrupted one loss for loss.
"""

from __future__ import annotations

import contextlib
import csv
import math
import random
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from dccnn_deploy.checkpoint import default_metadata, read_checkpoint, save_checkpoint
from dccnn_deploy.config import ModelConfig
from dccnn_deploy.io.errors import OutputExistsError
from dccnn_deploy.losses import DCCNNLoss
from dccnn_deploy.metrics import folding_percent, inverse_consistency, ncc, warped_label_dice
from dccnn_deploy.model import DCCNNLSTMReg, RegistrationOutput, ScaleTrace
from dccnn_deploy.ops.warp import warp_gridsample
from dccnn_deploy.train import distributed
from dccnn_deploy.train.config import TrainConfig
from dccnn_deploy.train.data import Pair, PairSampler, build_sampler
from dccnn_deploy.train.synth import HEAD_LABELS

LOSS_TERMS = ("similarity", "jacobian", "smooth", "cycle", "control", "label_dice")
VAL_TERMS = ("dice", "ncc", "folding_percent", "inverse_consistency", "score")
LOG_FIELDS = ("step", "kind", "loss", *LOSS_TERMS, "lr", "seconds", *VAL_TERMS, "pairs")


@dataclass
class TrainResult:
    """What :func:`train` did in this process: the last step, the best validation score, the
    checkpoint paths written (rank 0), the trained network (this rank's replica) and this
    process's log rows (``history``: train rows with the pair names it drew; ``validation``:
    val rows, rank 0 only)."""

    step: int
    best_score: float | None
    last: Path | None
    best: Path | None
    model: DCCNNLSTMReg | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    validation: list[dict[str, Any]] = field(default_factory=list)


# ---------------------------------------------------------------------------- RNG state


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU, CUDA) RNG states as tensors and plain values."""
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": random.getstate(),
        "numpy": {**np_state, "state": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                                        "pos": int(np_state["state"]["pos"])}},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`rng_state`."""
    random.setstate(state["python"])
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": state["numpy"]["state"]["key"].numpy().astype(np.uint32),
                         "pos": state["numpy"]["state"]["pos"]}
    np.random.set_state(np_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- log


class CsvLog:
    """``log.csv`` with :data:`LOG_FIELDS`; on resume, rows after ``keep_until`` are dropped."""

    def __init__(self, path: Path, keep_until: int | None = None):
        rows = []
        if keep_until is not None and path.is_file():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if int(r["step"]) <= keep_until]
        self._file = open(path, "w", newline="")
        self._writer = csv.DictWriter(self._file, LOG_FIELDS, restval="", extrasaction="ignore")
        self._writer.writeheader()
        self._writer.writerows(rows)
        self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow(row)
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_log(path: str | Path) -> list[dict[str, str]]:
    """Rows of a ``log.csv`` as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------------- steps


def _autocast(device: torch.device, amp: str):
    """bf16/fp16 autocast on CUDA; nothing elsewhere."""
    if device.type != "cuda" or amp == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def _as_float(out: RegistrationOutput) -> RegistrationOutput:
    """The traced output in float32 (the losses run outside autocast)."""
    f = lambda t: t.float()  # noqa: E731
    scales = [ScaleTrace(f(s.fields), [f(u) for u in s.increments], [f(h) for h in s.homotopies]) for s in out.scales]
    return RegistrationOutput(f(out.forward), f(out.inverse), scales)


def _pair_metrics(model: DCCNNLSTMReg, pair: Pair, device: torch.device, amp: str, ignore: tuple[int, ...]
                  ) -> dict[str, float]:
    """Dice (labelled pairs, labels in ``ignore`` and 0 left out), NCC, % det J <= 0 and inverse
    consistency of one registration."""
    with torch.no_grad(), _autocast(device, amp):
        out = model(pair.moving.to(device), pair.fixed.to(device))
    fwd, inv = out.forward.float().cpu(), out.inverse.float().cpu()
    moved = warp_gridsample(pair.moving, fwd, padding="zeros")
    m = {
        "ncc": ncc(moved[0, 0].numpy(), pair.fixed[0, 0].numpy()),
        "folding_percent": folding_percent(fwd),
        "inverse_consistency": inverse_consistency(fwd, inv)["mean"],
    }
    if pair.moving_labels is not None and pair.fixed_labels is not None:
        m["dice"] = warped_label_dice(fwd, pair.moving_labels[0, 0].numpy(), pair.fixed_labels[0, 0].numpy(),
                                      ignore=ignore)
    return m


def validate(
    model: DCCNNLSTMReg, pairs: list[Pair], device: torch.device, amp: str = "off", ignore_labels: tuple[int, ...] = ()
) -> dict[str, float]:
    """Means over the validation pairs; ``score`` = mean Dice if any pair is labelled, else NCC."""
    if not pairs:
        return {}
    was_training = model.training
    model.eval()
    try:
        per_pair = [_pair_metrics(model, p, device, amp, tuple(ignore_labels)) for p in pairs]
    finally:
        model.train(was_training)
    out = {k: float(np.nanmean([m[k] for m in per_pair])) for k in ("ncc", "folding_percent", "inverse_consistency")}
    dices = [m["dice"] for m in per_pair if "dice" in m]
    if dices:
        out["dice"] = float(np.nanmean(dices))
    out["score"] = out.get("dice", out["ncc"])
    return out


def _progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(), disable=not enabled,
    )


# ---------------------------------------------------------------------------- the run


class BatchPrefetcher:
    """Draws the batch of the next step in a background thread while this one trains (torch
    releases the GIL). Batches are a function of the step, so results do not change."""

    def __init__(self, sampler: PairSampler):
        self.sampler = sampler
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
        self.pending: dict[int, Future] = {}

    def get(self, step: int):
        future = self.pending.pop(step, None)
        batch = future.result() if future is not None else self.sampler.labelled_batch(step)
        self.pending = {step + 1: self.pool.submit(self.sampler.labelled_batch, step + 1)}
        return batch

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class _Run:
    """State of one training process (model, optimizer, sampler, outputs)."""

    def __init__(self, config: TrainConfig, out_dir: Path, info: distributed.DistInfo):
        self.config, self.out_dir, self.info = config, Path(out_dir), info
        self.device = info.device
        torch.manual_seed(config.seed)  # identical initial weights on every rank
        self.net = DCCNNLSTMReg(config.model).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=config.lr)
        fp16 = self.device.type == "cuda" and config.amp == "fp16"
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=fp16)
        self.loss = DCCNNLoss(config.loss, divisor=config.model.divisor)
        self.sampler: PairSampler = build_sampler(config, self.info.rank)
        self.step, self.best, self.last_val = 0, None, {}

    def warm_start(self, path: Path) -> None:
        """Start from the weights of another checkpoint (same model config), step 0."""
        ckpt = read_checkpoint(path)
        if ModelConfig.from_dict(ckpt["model_config"]) != self.config.model:
            raise ValueError(f"{path}: the checkpoint's model config differs from the training config")
        self.net.load_state_dict(ckpt["state_dict"])

    def resume(self, path: Path) -> None:
        """Restore weights, optimizer, scaler, step, best score, RNG and sampler states."""
        ckpt = read_checkpoint(path)
        if ModelConfig.from_dict(ckpt["model_config"]) != self.config.model:
            raise ValueError(f"{path}: the checkpoint's model config differs from the training config")
        if "optimizer" not in ckpt or "step" not in ckpt:
            raise ValueError(f"{path}: not a training checkpoint (no optimizer state)")
        self.net.load_state_dict(ckpt["state_dict"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler") and self.scaler.is_enabled():
            self.scaler.load_state_dict(ckpt["scaler"])
        self.sampler.load_state_dict(ckpt.get("sampler", {}))
        set_rng_state(ckpt["rng"])
        self.step, self.best = int(ckpt["step"]), ckpt.get("best_score")
        self.last_val = ckpt.get("metadata", {}).get("training", {}).get("validation", {})

    def save(self, name: str) -> Path:
        metadata = {
            **default_metadata(self.config.grid_shape, self.config.spacing_mm),
            "training": {"step": self.step, "validation": self.last_val, "best_score": self.best,
                         "world_size": self.info.world_size, "data": self.sampler.describe()},
        }
        return save_checkpoint(
            self.out_dir / name, self.net, metadata, overwrite=True,
            optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(), step=self.step,
            rng=rng_state(), train_config=self.config.to_dict(), sampler=self.sampler.state_dict(),
            best_score=self.best,
        )

    def cascades(self, step: int) -> bool:
        """Whether ``step`` trains on a cascade's second pass (a function of seed, rank and step)."""
        p = self.config.cascade_prob
        return p > 0 and np.random.default_rng([self.config.seed, self.info.rank, step, 0xCA5]).random() < p

    def second_pass_input(self, moving: torch.Tensor, fixed: torch.Tensor,
                          onehots: tuple[torch.Tensor, torch.Tensor] | None):
        """The moving image (and its one-hot labels) pulled through the current network's forward
        field, without gradients: the input of an inference pass after the first."""
        with torch.no_grad(), _autocast(self.device, self.config.amp):
            fwd = self.net(moving, fixed).forward.float()
        moving = warp_gridsample(moving, fwd, padding="zeros")
        if onehots is not None:
            onehots = (warp_gridsample(onehots[0], fwd, padding="zeros"), onehots[1])
        return moving, onehots

    def train_step(self, model: torch.nn.Module, prefetch: "BatchPrefetcher | None" = None) -> dict[str, Any]:
        """One optimizer step on this rank's batch; returns the log row (losses averaged over ranks)."""
        start = time.perf_counter()
        self.step += 1
        batch = prefetch.get(self.step) if prefetch is not None else self.sampler.labelled_batch(self.step)
        moving, fixed, names = batch.moving.to(self.device), batch.fixed.to(self.device), batch.names
        onehots = None if batch.onehots is None else tuple(t.to(self.device) for t in batch.onehots)
        if self.cascades(self.step):
            moving, onehots = self.second_pass_input(moving, fixed, onehots)
            names = [f"{n} (2nd pass)" for n in names]
        with _autocast(self.device, self.config.amp):
            out = model(moving, fixed, trace=True)
        total, terms = self.loss(_as_float(out), moving, fixed, onehots, batch.same_contrast.to(self.device))
        if not math.isfinite(float(total.detach())):
            raise FloatingPointError(f"non-finite loss at step {self.step} (pairs {names})")
        self.optimizer.zero_grad(set_to_none=True)
        for group in self.optimizer.param_groups:
            group["lr"] = self.config.learning_rate(self.step)
        self.scaler.scale(total).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values = distributed.mean_over_ranks({"loss": float(total.detach()), **terms}, self.info)
        return {"step": self.step, "kind": "train", **values, "lr": self.optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - start, "pairs": ";".join(names)}

    def validate(self) -> dict[str, Any] | None:
        """Validation row of the current weights (None without validation pairs)."""
        ignore = ((self.config.synth.interior_label,) if self.config.synth.interior_label else ()) + HEAD_LABELS
        self.last_val = validate(self.net, self.sampler.validation_pairs(), self.device, self.config.amp, ignore)
        return {"step": self.step, "kind": "val", **self.last_val} if self.last_val else None


def train(
    config: TrainConfig,
    out_dir: str | Path,
    resume: str | Path | None = None,
    device: str | torch.device = "cpu",
    progress: bool = True,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train DCCNN-LSTM-Reg as ``config`` says, writing ``last.pt``, ``best.pt``, ``log.csv``.

    ``resume``: a ``last.pt`` to continue from exactly (weights, optimizer, step, RNG and
    sampler states; the config's ``lr`` and ``iterations`` apply). Without it ``out_dir`` must
    not hold a previous run. ``time_limit_s``: stop after the step that passes this wall time
    (then validate and write ``last.pt`` as at the last step; resume continues). Under torchrun every rank trains on its own pairs (DDP), and rank 0
    alone validates, writes and shows progress. Raises ``InputError`` / ``ValueError`` on bad
    data or config, ``OutputExistsError`` when ``out_dir`` holds a run and ``resume`` is None.
    """
    out_dir = Path(out_dir)
    if resume is None and (out_dir / "last.pt").exists():
        raise OutputExistsError.at(out_dir / "last.pt", "a run exists here; resume it or choose another output folder")
    threads = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(config.threads)
    info = distributed.setup(device)
    finished = False
    try:
        run = _Run(config, out_dir, info)
        if resume is not None:
            run.resume(Path(resume))
        elif config.init:
            run.warm_start(Path(config.init))
        deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        result = _loop(run, distributed.wrap(run.net, info), resume is not None, progress, deadline)
        finished = True
        return result
    finally:
        distributed.teardown(info, wait=finished)
        torch.set_num_threads(threads)


def _out_of_time(deadline: float | None, info: distributed.DistInfo) -> bool:
    """Whether the wall-time limit has passed (rank 0 decides for every rank)."""
    if deadline is None:
        return False
    late = torch.tensor([float(time.monotonic() > deadline)])
    if info.enabled:
        late = late.to(info.device)
        torch.distributed.broadcast(late, src=0)
    return bool(late.item())


def _loop(run: _Run, model: torch.nn.Module, resumed: bool, progress: bool, deadline: float | None = None
          ) -> TrainResult:
    """Steps from ``run.step`` to ``iterations`` (or the deadline); rank 0 logs, validates and checkpoints."""
    info, config = run.info, run.config
    result = TrainResult(run.step, run.best, None, None, run.net)
    with contextlib.ExitStack() as stack:
        log = None
        if info.is_main:
            run.out_dir.mkdir(parents=True, exist_ok=True)
            log = CsvLog(run.out_dir / "log.csv", keep_until=run.step if resumed else None)
            stack.callback(log.close)
        bar = stack.enter_context(_progress(progress and info.is_main))
        task = bar.add_task("train", total=config.iterations, completed=run.step, status="")
        say = bar.console.print if progress else None
        if info.is_main and not resumed and config.init and run.step < config.iterations:
            _log_validation(run, run.validate(), log, result, say)  # the warm start's score: step 0
        prefetch = BatchPrefetcher(run.sampler)
        stack.callback(prefetch.close)
        while run.step < config.iterations:
            row = run.train_step(model, prefetch)
            result.history.append(row)
            bar.update(task, advance=1, status=f"loss {row['loss']:.4f}")
            stop = _out_of_time(deadline, info)
            if info.is_main:
                _after_step(run, row, log, result, say, final=stop)
            if stop:
                break
    result.step, result.best_score = run.step, run.best
    return result


def _log_validation(run: _Run, val: dict[str, Any] | None, log: CsvLog, result: TrainResult,
                    say: Callable | None) -> None:
    """Log a validation row; a new best score writes ``best.pt``."""
    if val is None:
        return
    log.write(val)
    result.validation.append(val)
    if say is not None:
        say(f"step {run.step} validation: " + ", ".join(f"{k} {v:.4f}" for k, v in run.last_val.items()))
    if run.best is None or val["score"] > run.best:
        run.best = val["score"]
        result.best = run.save("best.pt")


def _after_step(run: _Run, row: dict[str, Any], log: CsvLog, result: TrainResult, say: Callable | None,
                final: bool = False) -> None:
    """Rank 0: log the step, validate and checkpoint when due (always at the last step)."""
    cfg, step = run.config, run.step
    log.write(row)
    final = final or step == cfg.iterations
    if step % cfg.val_every == 0 or final:
        _log_validation(run, run.validate(), log, result, say)
    if step % cfg.checkpoint_every == 0 or final:
        result.last = run.save("last.pt")
