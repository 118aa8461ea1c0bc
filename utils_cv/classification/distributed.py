"""Data-parallel training with PyTorch's launcher: the one recipe of ``train.py`` on N processes.

Under ``torchrun`` (or any launcher that sets the ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT`` environment variables), ``train.train`` trains
data-parallel by itself; one process without those variables trains as before::

    torchrun --nproc_per_node 2 -m utils_cv.classification.train DATA_DIR --out MODEL_DIR

How each stage of the recipe is shared out:

1. Cached-features head: every process extracts the pooled body features of its shard of the
   images (image ``i`` goes to process ``i % world_size``); the features are gathered
   (``all_gather``) back into image order, so every process holds all of them, and each trains
   the (small) head on them with the same seed, as one process would.
2. Fine-tuning (``epochs`` > 0): fastai's distributed support (``Learner.distrib_ctx``, built on
   Hugging Face Accelerate): the network is wrapped in DistributedDataParallel and each process
   sees its share of every batch. ``batch_size`` stays the global batch (each process takes
   ``batch_size // world_size`` images), so the number of steps and the learning-rate schedule
   are those of one process.

The backend is NCCL on GPUs (one GPU per process, ``cuda:LOCAL_RANK``) and gloo on CPUs. Only
rank 0 should write files (``is_main_process``); ``train_cli`` saves the model there, in the
same format as a single process (``saved.save_model``).

Needs the ``distributed`` extra (``pip install .[distributed]``: Accelerate for fastai's
distributed training) only when more than one process runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from datetime import timedelta

import torch
import torch.distributed as dist

try:
    from fastai.callback.core import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedSetupError(RuntimeError):
    """The process group cannot be set up; the message says what to install or set."""


def env_world_size() -> int:
    """Processes the launcher started (``WORLD_SIZE``; 1 when not launched by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def backend_for(device: str | torch.device | None = None) -> str:
    """The collective backend for ``device``: "nccl" on CUDA, else "gloo".

    device : the processes' device type; default: CUDA when available.
    """
    if device is None:
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def init_process_group(backend: str | None = None, timeout_s: float = 600.0) -> bool:
    """Join the process group that ``torchrun`` describes in the environment.

    backend : "gloo" or "nccl" (default: ``backend_for()``). With NCCL, this process uses GPU
    ``LOCAL_RANK``. timeout_s : seconds a collective may wait for the other processes.

    Returns True when this call created the group; False when there is nothing to join (no
    ``WORLD_SIZE`` > 1) or the group exists already. Raises DistributedSetupError naming the
    missing environment variables.
    """
    if dist.is_initialized() or env_world_size() <= 1:
        return False
    missing = [name for name in ENV_VARS if name not in os.environ]
    if missing:
        raise DistributedSetupError(
            f"WORLD_SIZE={env_world_size()} but {', '.join(missing)} are not set. Start the "
            f"processes with torchrun (it sets them all), e.g. `torchrun --nproc_per_node 2 -m "
            f"utils_cv.classification.train DATA_DIR --out MODEL_DIR`."
        )
    backend = backend or backend_for()
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return True


def destroy_process_group() -> None:
    """Leave the process group (no-op when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    """This process's rank, 0..world_size-1 (0 without a process group)."""
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the group (1 without a process group)."""
    return dist.get_world_size() if dist.is_initialized() else 1


def is_distributed() -> bool:
    """True inside a process group of more than one process."""
    return world_size() > 1


def is_main_process() -> bool:
    """True on rank 0 (and in a single process): the one that writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (no-op in a single process)."""
    if is_distributed():
        dist.barrier()


def device() -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` under NCCL, ``cuda`` or ``cpu`` otherwise."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def shard(items: Sequence, rank_: int | None = None, world_size_: int | None = None) -> list:
    """This process's share of ``items``: ``items[rank::world_size]`` (every item exactly
    once over all processes; shares differ in length by at most one)."""
    rank_ = rank() if rank_ is None else rank_
    world_size_ = world_size() if world_size_ is None else world_size_
    return list(items)[rank_::world_size_]


def all_gather_rows(x: torch.Tensor) -> list[torch.Tensor]:
    """Every process's ``x`` (same shape but for the first dimension, same dtype), in rank
    order. Rows are padded to the longest share for the collective and cut back after."""
    if not is_distributed():
        return [x]
    n = torch.tensor([len(x)], device=x.device)
    lengths = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(lengths, n)
    longest = int(max(lengths).item())
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: len(x)] = x
    parts = [torch.empty_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded.contiguous())
    return [part[: int(m.item())] for part, m in zip(parts, lengths)]


def unshard(parts: Sequence[torch.Tensor], n: int, passes: int = 1) -> torch.Tensor:
    """Inverse of ``shard`` over ``passes`` passes: ``parts[r]`` holds the rows of items
    ``r, r + world, ...`` pass after pass; returns the (n * passes, ...) rows in item order,
    pass after pass (as one process extracting item by item would lay them out)."""
    world = len(parts)
    first = parts[0]
    out = torch.empty((n * passes, *first.shape[1:]), dtype=first.dtype, device=first.device)
    for r, part in enumerate(parts):
        share = len(range(r, n, world))
        if len(part) != share * passes:
            raise ValueError(
                f"unshard: process {r} sent {len(part)} rows, expected {share * passes} "
                f"({share} items x {passes} passes)."
            )
        for p in range(passes):
            out[p * n + r : (p + 1) * n : world] = part[p * share : (p + 1) * share]
    return out


def sharded_features(learn, dl, passes: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``train.extract_features`` across processes: each process extracts its shard of
    ``dl``'s items (in order, no image dropped), the rows are gathered in item order.

    Returns x (n_items * passes, n_features) and y, identical on every process.
    """
    from utils_cv.classification.train import _pooled_features

    n = len(dl.dataset)
    mine = shard(range(n))
    local = dl.new(shuffle=False, drop_last=False, get_idxs=lambda: mine)
    if getattr(dl, "device", None) is not None:
        learn.model.to(dl.device)
    x, y = _pooled_features(learn.model[0], learn.model[1][0], local, passes)
    x_all = unshard(all_gather_rows(x), n, passes)
    y_all = unshard(all_gather_rows(y), n, passes)
    return x_all, y_all


class _GlobalBatch(_Callback):
    """fastai callback: each process's training batch is ``bs // world_size`` images while
    fitting, so the global batch (and the step count) is that of one process."""

    order = 10  # before fastai's DistributedTrainer (11) wraps the loaders

    def before_fit(self):
        self.loader = self.learn.dls.train
        self.bs = self.loader.bs
        self.loader.bs = max(1, self.bs // world_size())

    def after_fit(self):
        self.loader.bs = self.bs


@contextmanager
def data_parallel(learn):
    """While inside, ``learn`` trains data-parallel when a process group of more than one
    process exists (or torchrun's environment asks for one: it is joined); otherwise nothing
    changes. Used by ``train.train`` around the recipe.

    Sets ``learn.feature_sharding`` (``sharded_features``, which ``train.extract_features``
    calls) and adds fastai's DistributedTrainer (DistributedDataParallel for fine-tuning, as
    ``Learner.distrib_ctx`` does; needs Accelerate, DistributedSetupError if missing).
    """
    init_process_group()
    if not is_distributed():
        yield learn
        return
    try:
        import accelerate  # noqa: F401
        import fastai.distributed  # noqa: F401  (adds Learner.distrib_ctx)
    except ImportError as err:
        raise DistributedSetupError(
            f"Training on {world_size()} processes needs Hugging Face Accelerate ({err}). "
            f"Install the extra: pip install -e '.[distributed]'."
        ) from None
    from fastai.callback.progress import ProgressCallback

    on_cpu = dist.get_backend() != "nccl"
    if not on_cpu:  # the loaders were built for the default GPU; this process has its own
        learn.dls.to(device())
        learn.model.to(device())
    trainer = _trainer_class()(sync_bn=False, cpu=on_cpu)
    quiet = learn.removed_cbs(ProgressCallback) if rank() else nullcontext()
    learn.feature_sharding = sharded_features
    try:
        with learn.added_cbs([_GlobalBatch(), trainer]), quiet:
            yield learn
    finally:
        del learn.feature_sharding


def _trainer_class():
    """fastai's DistributedTrainer whose loaders also work with gloo: fastai's DistributedDL
    broadcasts the epoch's shuffled indices as a CUDA tensor, which a CPU cannot make."""
    from fastai.distributed import DistributedDL, DistributedTrainer

    class AnyDeviceDistributedDL(DistributedDL):
        def _broadcast(self, t, rank_):
            on = "cuda" if dist.get_backend() == "nccl" else "cpu"
            t = torch.tensor(t, dtype=torch.long, device=on)
            dist.broadcast(t, rank_)
            return t.cpu().tolist()

    class AnyDeviceDistributedTrainer(DistributedTrainer):
        def _wrap_dl(self, dl):
            if isinstance(dl, DistributedDL):
                return dl
            return AnyDeviceDistributedDL(dl, device=dl.device)

    return AnyDeviceDistributedTrainer


def validation_accuracy(learn) -> float:
    """``train.validation_accuracy`` of ``learn``, called on every process alike.

    In a process group each process predicts its shard of the validation set and the scores
    are gathered in image order (fastai's ``get_preds`` gathers whenever ``WORLD_SIZE`` > 1, so
    calling it on one rank only would wait forever); in a single process it is
    ``train.validation_accuracy``. Returns a fraction, the same on every process.
    """
    from utils_cv.classification import train
    from utils_cv.classification.metrics import accuracy, hamming_accuracy

    if not is_distributed():
        return train.validation_accuracy(learn)
    dl = learn.dls.valid
    n = len(dl.dataset)
    mine = shard(range(n))
    local = dl.new(shuffle=False, drop_last=False, get_idxs=lambda: mine)
    activation = getattr(learn.loss_func, "activation", lambda x: x)
    model = learn.model.to(dl.device).eval()
    scores, targets = [], []
    with torch.no_grad():
        for xb, yb in local:
            scores.append(activation(model(xb)).float().as_subclass(torch.Tensor))
            targets.append(yb.as_subclass(torch.Tensor))
    y_score = unshard(all_gather_rows(torch.cat(scores)), n).cpu().numpy()
    y_true = unshard(all_gather_rows(torch.cat(targets)), n).cpu().numpy()
    if getattr(learn, "multilabel", False):
        return hamming_accuracy(y_true, y_score, learn.spec.threshold)
    return accuracy(y_true, y_score)
