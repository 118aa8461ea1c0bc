"""Benchmark (screening): candidate recipe changes for unseen objects, on cached features.

Every evaluation set of ``classification/tools/make_eval_sets.py`` has object instances in
validation that never appear in training. For each (set, seed) the frozen bodies of
EfficientNet-Lite0 (224 px and 300 px), Lite1 (240) and Lite2 (260) cache features of ``--passes``
augmented passes over the training images and of the validation images as they are and
mirrored; then heads with the recipe's settings train on them:

- ``<backbone>``: the recipe's head (2 augmented passes); ``<backbone>_p4``: 4 passes;
- ``<backbone>_flip``: validation scored on the mean probability over the image and its mirror;
- ``<backbone>_ls``: label smoothing 0.1 (single-label sets), also with the mirror
  (``_ls_flip``) and with 4 passes and the mirror (``_ls_p4_flip``);
- ``lite0+lite2`` (and other pairs): one head on both bodies' features side by side;
- ``lite0|lite2`` (and other pairs): two heads, one per body, probabilities averaged.

Reports validation accuracy (multi-label: hamming and zero-one at 0.5) per variant, the mean
over seeds, and the feature seconds of each body (the recipe's main cost). Seeds change the
augmentation, data order and head initialisation. This screens; the end-to-end comparison with
the plain fastai recipe is ``bench_unseen_objects.py``.

    python classification/tools/make_eval_sets.py     # once: builds data/eval_sets
    python benchmarks/bench_unseen_candidates.py --seeds 0 1 2
"""

from __future__ import annotations

import itertools
import sys
import time
from pathlib import Path

import torch
from common import base_parser, present_backbones, run_screening, setup

from utils_cv.classification.data import get_dls
from utils_cv.classification.metrics import accuracy, hamming_accuracy, zero_one_accuracy
from utils_cv.classification.network import build_head
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import (
    EPOCHS_HEAD,
    LEARNING_RATE,
    create_learner,
    extract_features,
    train_head,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "classification" / "tools"))
from make_eval_sets import DEFAULT_OUT as EVAL_DIR  # noqa: E402
from make_eval_sets import EVAL_SETS, eval_set_path  # noqa: E402

BODIES = {"lite0": ("efficientnet_lite0", 224), "lite1": ("efficientnet_lite1", 240)}
BODIES |= {"lite2": ("efficientnet_lite2", 260), "lite0_300": ("efficientnet_lite0", 300)}
DROPOUT = 0.2


class Body:
    """Cached features of one body on one (set, seed)."""

    def __init__(self, path: Path, name: str, seed: int, passes: int, device):
        from fastai.vision.all import set_seed

        arch, im_size = BODIES[name]
        spec = ModelSpec(backbone=arch, im_size=im_size, dropout=DROPOUT)
        set_seed(seed)
        start = time.perf_counter()
        dls = get_dls(path, spec, 16, seed=seed, device=device)
        self.learn = create_learner(dls, spec, record_train_metrics=False)
        train_dl = dls.train.new(shuffle=False, drop_last=False)
        self.n_train = len(dls.train_ds)
        self.x_train, self.y_train = extract_features(self.learn, train_dl, passes)
        self.x_valid, self.y_valid = extract_features(self.learn, dls.valid)
        self.seconds_per_pass = (time.perf_counter() - start) / (passes + 1)
        body, pool = self.learn.model[0], self.learn.model[1][0]
        with torch.no_grad():
            self.x_flip = torch.cat(
                [
                    pool(body(xb.flip(3).contiguous(memory_format=torch.channels_last)))
                    .float()
                    .as_subclass(torch.Tensor)
                    for xb, _ in dls.valid
                ]
            )
        self.multilabel = self.learn.multilabel

    def rows(self, passes: int) -> slice:
        return slice(0, passes * self.n_train)


def train_probs(learn, x_train, y_train, x_valids, seed: int, smoothing: float = 0.0):
    """A fresh recipe head on ``x_train``; its probabilities on each of ``x_valids``."""
    from fastai.vision.all import CrossEntropyLossFlat, set_seed

    set_seed(seed)
    head = build_head(x_train.shape[1] // 2, learn.dls.c, DROPOUT, "mlp").to(x_train.device)
    saved = learn.model[1], learn.loss_func
    learn.model[1] = head
    if smoothing:
        learn.loss_func = CrossEntropyLossFlat(label_smoothing=smoothing)
    try:
        train_head(learn, x_train, y_train, epochs=EPOCHS_HEAD, lr=LEARNING_RATE, progress=False)
    finally:
        learn.model[1], learn.loss_func = saved
    head.eval()
    with torch.no_grad():
        outs = [head[1:](x) for x in x_valids]
    if learn.multilabel:
        return [o.sigmoid() for o in outs]
    return [o.softmax(dim=1) for o in outs]


def scores(multilabel: bool, y, prob) -> dict:
    y, prob = y.cpu().numpy(), prob.float().cpu().numpy()
    if multilabel:
        return {"accuracy": hamming_accuracy(y, prob), "zero_one": zero_one_accuracy(y, prob)}
    return {"accuracy": accuracy(y, prob)}


def run_seed(name: str, seed: int, args, device) -> list[dict]:
    path = eval_set_path(name, args.eval_dir)
    bodies = {b: Body(path, b, seed, args.passes, device) for b in args.bodies}
    first = bodies[args.bodies[0]]
    multilabel, y_valid = first.multilabel, first.y_valid
    probs, rows = {}, []

    def add(variant: str, prob, seconds: float) -> None:
        rows.append({"set": name, "seed": seed, "variant": variant, "feature_s": seconds})
        rows[-1].update(scores(multilabel, y_valid, prob))
        zol = f" zero-one {rows[-1]['zero_one']:.3f}" if multilabel else ""
        print(f"{name:24s} seed {seed} {variant:14s} acc {rows[-1]['accuracy']:.3f}{zol}")

    for b, body in bodies.items():
        cost2 = body.seconds_per_pass * 3  # 2 training passes + validation
        x2, y2 = body.x_train[body.rows(2)], body.y_train[body.rows(2)]
        plain, flip = train_probs(body.learn, x2, y2, [body.x_valid, body.x_flip], seed)
        probs[b] = plain
        add(b, plain, cost2)
        add(f"{b}_flip", (plain + flip) / 2, cost2 + body.seconds_per_pass)
        rows4 = body.rows(4)
        (p4,) = train_probs(
            body.learn, body.x_train[rows4], body.y_train[rows4], [body.x_valid], seed
        )
        add(f"{b}_p4", p4, body.seconds_per_pass * 5)
        if not multilabel:
            ls, ls_flip = train_probs(body.learn, x2, y2, [body.x_valid, body.x_flip], seed, 0.1)
            add(f"{b}_ls", ls, cost2)
            add(f"{b}_ls_flip", (ls + ls_flip) / 2, cost2 + body.seconds_per_pass)
            x4, y4 = body.x_train[rows4], body.y_train[rows4]
            ls4, ls4_flip = train_probs(body.learn, x4, y4, [body.x_valid, body.x_flip], seed, 0.1)
            add(f"{b}_ls_p4_flip", (ls4 + ls4_flip) / 2, body.seconds_per_pass * 6)
    for a, b in itertools.combinations(args.bodies, 2):
        ba, bb = bodies[a], bodies[b]
        cost = (ba.seconds_per_pass + bb.seconds_per_pass) * 3
        add(f"{a}|{b}", (probs[a] + probs[b]) / 2, cost)
        x = torch.cat([ba.x_train[ba.rows(2)], bb.x_train[bb.rows(2)]], dim=1)
        xv = torch.cat([ba.x_valid, bb.x_valid], dim=1)
        (both,) = train_probs(ba.learn, x, ba.y_train[ba.rows(2)], [xv], seed)
        add(f"{a}+{b}", both, cost)
    return rows


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], "bench_unseen_candidates")
    parser.add_argument("--sets", nargs="+", default=list(EVAL_SETS), choices=list(EVAL_SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--bodies", nargs="+", default=list(BODIES), choices=list(BODIES))
    parser.add_argument("--passes", type=int, default=4, help="augmented passes to extract")
    parser.add_argument("--eval_dir", type=Path, default=EVAL_DIR, help="make_eval_sets output")
    args = parser.parse_args()
    present, skipped = present_backbones([BODIES[b][0] for b in args.bodies])
    args.bodies = [b for b in args.bodies if BODIES[b][0] in present]
    device = setup(args)
    run_screening(args, "unseen_candidates", run_seed, device)


if __name__ == "__main__":
    main()
