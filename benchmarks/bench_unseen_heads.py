"""Benchmark (screening): image size, pooling, feature layers and head training for unseen objects.

For each evaluation set of ``classification/tools/make_eval_sets.py`` (validation objects never
in training) and seed, the frozen EfficientNet-Lite0 body caches, at each ``--sizes`` image
size, features of 2 augmented passes over the training images (the recipe's) and of the
validation images as they are and mirrored: the concat-pooled (max, mean) output of the body
and of its last two block stages (320 and 192 channels). Heads then train on them with the
recipe's settings (fastai's head, dropout 0.2, AdamW, one cycle at 3e-3, 40 epochs, batches of
16, label smoothing 0.1 on single-label sets):

- ``<size>``: the recipe (body output, concat pooling);
- ``<size>_avg``: mean pooling only; ``<size>_stages``: the two last stages' pooled features
  next to the body's; ``<size>_mix``: mixup of feature rows (alpha 0.4);
- ``<size>_ncm``: nearest class mean by cosine similarity of the mean-pooled features
  (single-label), ``<size>_ncm_ens``: its probabilities averaged with the recipe's;
- ``<size>_inet``: the ImageNet classifier's log-probabilities (1000) next to the body's
  features; ``<size>_inet_only``: those alone;
- with ``--more``: ``<size>_ls0.2``, ``_ls0.3`` (label smoothing), ``_d0.5`` (dropout 0.5),
  ``_ls0.2_d0.5``, ``_mix_d0.5``;
- ``<size>_flip``: the recipe scored on the mean over the image and its mirror;
- ``<a>|<b>``: the recipe's probabilities at sizes a and b averaged.

Reports accuracy (multi-label: hamming and zero-one at 0.5) per variant and the feature
seconds per size. This screens; ``bench_unseen_objects.py`` compares end to end with fastai.

    python benchmarks/bench_unseen_heads.py --sets animals_photo --seeds 0 1 2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch
from common import base_parser, run_screening, setup
from torch import nn

from utils_cv.classification.data import get_dls, sample_data_path
from utils_cv.classification.metrics import accuracy, hamming_accuracy, zero_one_accuracy
from utils_cv.classification.network import build_head
from utils_cv.classification.spec import ModelSpec
from utils_cv.classification.train import (
    EPOCHS_HEAD,
    LABEL_SMOOTHING,
    LEARNING_RATE,
    create_learner,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "classification" / "tools"))
from make_eval_sets import DEFAULT_OUT as EVAL_DIR  # noqa: E402
from make_eval_sets import EVAL_SETS, eval_set_path  # noqa: E402

SHIPPED_SETS = ("objects", "objects_multilabel")  # in the package; validation objects unseen too
SETS = (*EVAL_SETS, *SHIPPED_SETS)

DROPOUT = 0.2
BATCH = 16


def concat_pool(x: torch.Tensor) -> torch.Tensor:
    """(max, mean) over the spatial positions, as fastai's AdaptiveConcatPool2d."""
    return torch.cat([x.amax(dim=(2, 3)), x.mean(dim=(2, 3))], dim=1)


class Features:
    """Pooled features of one (set, seed, size): body output and the last two stages."""

    def __init__(self, path: Path, im_size: int, seed: int, device):
        from fastai.vision.all import set_seed

        spec = ModelSpec(
            backbone="efficientnet_lite0", im_size=im_size, dropout=DROPOUT, feature_stages=0
        )
        set_seed(seed)
        start = time.perf_counter()
        dls = get_dls(path, spec, BATCH, seed=seed, device=device)
        learn = create_learner(dls, spec, record_train_metrics=False)
        self.multilabel, self.c = learn.multilabel, dls.c
        body = learn.model[0].to(device).eval()
        stages = body.model.blocks
        grabbed = []
        hooks = [s.register_forward_hook(lambda m, i, o: grabbed.append(o)) for s in stages[5:]]
        if device.type == "cpu":
            body.to(memory_format=torch.channels_last)

        def run(dl, passes=1, flip=False):
            feats, stage_feats, targs = [], [], []
            with torch.no_grad():
                for _ in range(passes):
                    for xb, yb in dl:
                        xb = xb.as_subclass(torch.Tensor)
                        if flip:
                            xb = xb.flip(3)
                        if device.type == "cpu":
                            xb = xb.contiguous(memory_format=torch.channels_last)
                        grabbed.clear()
                        feats.append(concat_pool(body(xb)).float())
                        stage_feats.append(torch.cat([concat_pool(g) for g in grabbed], 1).float())
                        targs.append(yb.as_subclass(torch.Tensor))
            return torch.cat(feats), torch.cat(stage_feats), torch.cat(targs)

        train_dl = dls.train.new(shuffle=False, drop_last=False)
        self.x, self.xs, self.y = run(train_dl, passes=2)
        self.seconds = time.perf_counter() - start
        self.xv, self.xvs, self.yv = run(dls.valid)
        self.xf, _, _ = run(dls.valid, flip=True)
        for h in hooks:
            h.remove()


def loss_fn(multilabel: bool, smoothing: float = LABEL_SMOOTHING):
    if multilabel:
        return nn.BCEWithLogitsLoss()
    return nn.CrossEntropyLoss(label_smoothing=smoothing)


def fit_head(x, y, xvs, c, multilabel, seed, mixup=0.0, smoothing=LABEL_SMOOTHING, dropout=DROPOUT):
    """The recipe's head trained on rows ``x``; its probabilities on each of ``xvs``."""
    torch.manual_seed(seed)
    head = build_head(x.shape[1] // 2, c, dropout, "mlp")[1:].to(x.device)
    n_batches = max(1, len(x) // BATCH)
    opt = torch.optim.AdamW(head.parameters(), lr=LEARNING_RATE, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=LEARNING_RATE, total_steps=EPOCHS_HEAD * n_batches
    )
    crit = loss_fn(multilabel, smoothing)
    yt = y.float() if multilabel else y.long()
    beta = torch.distributions.Beta(mixup, mixup) if mixup else None
    for _ in range(EPOCHS_HEAD):
        head.train()
        order = torch.randperm(len(x))
        for i in range(n_batches):
            idx = order[i * BATCH : (i + 1) * BATCH]
            xb, yb = x[idx], yt[idx]
            if beta is None:
                loss = crit(head(xb), yb)
            else:
                lam = float(beta.sample())
                perm = torch.randperm(len(idx))
                out = head(lam * xb + (1 - lam) * xb[perm])
                loss = lam * crit(out, yb) + (1 - lam) * crit(out, yb[perm])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    head.eval()
    with torch.no_grad():
        outs = [head(xv) for xv in xvs]
    return [o.sigmoid() if multilabel else o.softmax(1) for o in outs]


def ncm_probs(x, y, xv, c, temperature: float = 0.05):
    """Nearest class mean by cosine similarity of mean-pooled features, as probabilities."""
    half = x.shape[1] // 2
    f = nn.functional.normalize(x[:, half:], dim=1)
    means = torch.stack([f[y == k].mean(0) for k in range(c)])
    means = nn.functional.normalize(means, dim=1)
    sims = nn.functional.normalize(xv[:, half:], dim=1) @ means.T
    return (sims / temperature).softmax(1)


_CLASSIFIER = []


def imagenet_logprobs(x: torch.Tensor) -> torch.Tensor:
    """ImageNet log-probabilities (1000) from the body's mean-pooled half of ``x``."""
    if not _CLASSIFIER:
        from utils_cv.classification.backbones import get_backbone

        model = get_backbone("efficientnet_lite0").create_imagenet_model(pretrained=True)
        _CLASSIFIER.append(model.get_classifier().to(x.device))
    with torch.no_grad():
        return _CLASSIFIER[0](x[:, x.shape[1] // 2 :]).log_softmax(1)


def scores(multilabel: bool, y, prob) -> dict:
    y, prob = y.cpu().numpy(), prob.float().cpu().numpy()
    if multilabel:
        return {"accuracy": hamming_accuracy(y, prob), "zero_one": zero_one_accuracy(y, prob)}
    return {"accuracy": accuracy(y, prob)}


def avg_half(x):
    half = x.shape[1] // 2
    return torch.cat([x[:, half:], x[:, half:]], 1)  # fastai's head expects 2 * n_features


def run_seed(name: str, seed: int, args, device) -> list[dict]:
    if name in SHIPPED_SETS:
        path = sample_data_path(name)
    else:
        path = eval_set_path(name, args.eval_dir)
    rows, base = [], {}

    def add(variant, prob, feats):
        row = {"set": name, "seed": seed, "variant": variant, "feature_s": feats.seconds}
        row.update(scores(feats.multilabel, feats.yv, prob))
        rows.append(row)
        zol = f" zero-one {row['zero_one']:.3f}" if feats.multilabel else ""
        print(f"{name:24s} seed {seed} {variant:12s} acc {row['accuracy']:.3f}{zol}", flush=True)

    for size in args.sizes:
        f = Features(path, size, seed, device)
        ml, c = f.multilabel, f.c
        plain, flip = fit_head(f.x, f.y, [f.xv, f.xf], c, ml, seed)
        base[size] = plain
        add(f"{size}", plain, f)
        add(f"{size}_flip", (plain + flip) / 2, f)
        (p,) = fit_head(avg_half(f.x), f.y, [avg_half(f.xv)], c, ml, seed)
        add(f"{size}_avg", p, f)
        (p,) = fit_head(torch.cat([f.x, f.xs], 1), f.y, [torch.cat([f.xv, f.xvs], 1)], c, ml, seed)
        add(f"{size}_stages", p, f)
        (p,) = fit_head(f.x, f.y, [f.xv], c, ml, seed, mixup=0.4)
        add(f"{size}_mix", p, f)
        inet, inet_v = imagenet_logprobs(f.x), imagenet_logprobs(f.xv)
        (p,) = fit_head(torch.cat([f.x, inet], 1), f.y, [torch.cat([f.xv, inet_v], 1)], c, ml, seed)
        add(f"{size}_inet", p, f)
        (p,) = fit_head(inet, f.y, [inet_v], c, ml, seed)
        add(f"{size}_inet_only", p, f)
        if args.more:
            for ls in (0.2, 0.3):
                if not ml:
                    (p,) = fit_head(f.x, f.y, [f.xv], c, ml, seed, smoothing=ls)
                    add(f"{size}_ls{ls}", p, f)
            (p,) = fit_head(f.x, f.y, [f.xv], c, ml, seed, dropout=0.5)
            add(f"{size}_d0.5", p, f)
            if not ml:
                (p,) = fit_head(f.x, f.y, [f.xv], c, ml, seed, smoothing=0.2, dropout=0.5)
                add(f"{size}_ls0.2_d0.5", p, f)
            (p,) = fit_head(f.x, f.y, [f.xv], c, ml, seed, mixup=0.4, dropout=0.5)
            add(f"{size}_mix_d0.5", p, f)
        if not ml:
            p = ncm_probs(f.x, f.y, f.xv, c)
            add(f"{size}_ncm", p, f)
            add(f"{size}_ncm_ens", (p + plain) / 2, f)
    sizes = list(base)
    for i, a in enumerate(sizes):
        for b in sizes[i + 1 :]:
            add(f"{a}|{b}", (base[a] + base[b]) / 2, f)
    return rows


def main() -> None:
    parser = base_parser(__doc__.split("\n\n")[0], "bench_unseen_heads")
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--sizes", nargs="+", type=int, default=[300, 384])
    parser.add_argument(
        "--more", action="store_true", help="also label smoothing 0.2 / 0.3 and dropout 0.5"
    )
    parser.add_argument("--eval_dir", type=Path, default=EVAL_DIR, help="make_eval_sets output")
    args = parser.parse_args()
    device = setup(args)
    run_screening(args, "unseen_heads", run_seed, device)


if __name__ == "__main__":
    main()
