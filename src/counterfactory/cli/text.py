"""Text counterfactual commands: train-text2image, edit, triplets."""

from __future__ import annotations

import json
from pathlib import Path

from ._args import loop_args, loop_config, nonneg_float, positive_int, set_threads, threads_arg


def cmd_train_text2image(args) -> int:
    from ..models.text2image import Text2ImageConfig
    from ..training.text2image import Text2ImageTrainConfig, check_data, train_text2image

    set_threads(args)
    check_data(args.data)
    model = Text2ImageConfig(block_out_channels=tuple(args.channels))
    cfg = Text2ImageTrainConfig(out=args.out, data=args.data, batch_size=args.batch_size,
                                caption_dropout=args.caption_dropout, limit=args.limit, model=model,
                                loop=loop_config(args, warmup=100))
    summary = train_text2image(cfg, progress=not args.quiet)
    print(json.dumps(summary))
    return 0


def register(sub) -> None:
    p = sub.add_parser("train-text2image", help="train the compact text-to-image model on captioned Morpho-MNIST digits",
                       description="Caption the Morpho-MNIST train split from measured attributes, then train the word "
                                   "tokenizer's text encoder and a pixel-space U-Net with cross-attention (epsilon "
                                   "loss, caption dropout for guidance). Writes checkpoints (a rerun with the same "
                                   "--out resumes) and the model folder <out>/model.")
    p.add_argument("--data", required=True, help="Morpho-MNIST folder (e.g. ../shared/data/morphomnist)")
    p.add_argument("--out", required=True, help="run folder: captions, checkpoints, logs, <out>/model")
    p.add_argument("--channels", type=positive_int("--channels"), nargs="+", default=[16, 32, 32],
                   help="U-Net block widths, at least 3 (default 16 32 32)")
    p.add_argument("--caption-dropout", type=nonneg_float("--caption-dropout"), default=0.1,
                   help="fraction of empty captions, for classifier-free guidance (default 0.1)")
    p.add_argument("--limit", type=positive_int("--limit"), default=None, help="only the first N train images")
    loop_args(p, steps=4000, lr=1e-3, batch=32, ckpt=100)
    p.set_defaults(func=cmd_train_text2image)
