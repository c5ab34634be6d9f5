"""``counterfactory cir study|triplets|classifier``: composed image retrieval on Morpho-MNIST.

    counterfactory cir study --data ../shared/data/morphomnist --out runs/cir_study --fractions 10,30,100 --seeds 0,1,2
    counterfactory cir study ... --synthetic TRIPLETS_DIR          # adds real + synthetic runs and the paired difference
    counterfactory cir triplets --data ../shared/data/morphomnist --split test --out runs/cir_real_test
    counterfactory cir classifier --data ../shared/data/morphomnist --out runs/digit_classifier
    counterfactory cir encoder --data ../shared/data/morphomnist --out runs/cir_encoder
    counterfactory cir curve --data ../shared/data/morphomnist --out runs/cir_curve --fraction 30 --steps 1000
    counterfactory cir finetune-perturber --model LLM_FOLDER --out runs/perturber_lora

``study`` resumes after a kill (finished runs are kept). ``triplets`` writes a CIRR-format folder (caption file,
split file, PNG images) of real triplets. ``classifier`` trains the digit classifier that edit filters use.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._args import check_out, int_range, positive_int, seed_arg

DEFAULT_DATA = "../shared/data/morphomnist"


def _int_list(name: str, lo: int, hi: int | None = None):
    def parse(text: str) -> list[int]:
        try:
            vals = [int(t) for t in text.split(",") if t.strip()]
        except ValueError:
            vals = []
        if not vals or min(vals) < lo or (hi is not None and max(vals) > hi) or len(set(vals)) != len(vals):
            rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
            raise argparse.ArgumentTypeError(f"{name}={text!r}: distinct comma-separated integers {rng}, e.g. 0,1,2")
        return vals

    return parse


def register(sub) -> None:
    p = sub.add_parser("cir", help="composed image retrieval on Morpho-MNIST: study | curve | encoder | triplets | classifier | finetune-perturber")
    cmds = p.add_subparsers(dest="cir_command", metavar="<study|curve|encoder|triplets|classifier|finetune-perturber>", parser_class=type(p))
    cmds.required = True

    s = cmds.add_parser("study", help="data-scarce study: 10/30/100 %% real triplets, with and without synthetic ones")
    s.add_argument("--data", default=DEFAULT_DATA, help="Morpho-MNIST folder (IDX + csv)")
    s.add_argument("--out", required=True, help="study folder; a rerun with the same folder resumes")
    s.add_argument("--synthetic", default=None, help="CIRR-format triplet folder of synthetic triplets (optional)")
    s.add_argument("--fractions", type=_int_list("--fractions", 1, 100), default=[10, 30, 100],
                   help="percent of the real training triplets (default 10,30,100)")
    s.add_argument("--seeds", type=_int_list("--seeds", 0), default=[0, 1, 2], help="paired seeds (default 0,1,2)")
    s.add_argument("--encoder-steps", type=positive_int("--encoder-steps"), default=300)
    s.add_argument("--combiner-steps", type=positive_int("--combiner-steps"), default=200)
    s.add_argument("--threads", type=positive_int("--threads"), default=1, help="torch CPU threads (default 1)")
    s.add_argument("--encoder", default=None,
                   help="a saved dual encoder (`cir encoder`, or weights/cir_encoder) to use instead of fitting one")
    s.add_argument("--finetune-image", action="store_true",
                   help="also train a copy of the image tower on the triplets (CLIP4Cir stage-1 style)")
    s.add_argument("--synthetic-per-batch", type=int_range("--synthetic-per-batch", 1, 4096), default=32,
                   help="synthetic triplets added to each batch of 128 real ones (default 32)")
    s.add_argument("--synthetic-reference", choices=("own", "nearest"), default="own",
                   help="a synthetic triplet's reference: the digit that was edited ('own', default) or the train "
                        "digit of its class nearest to it in the measured attributes ('nearest'), so that the "
                        "target is another instance, as in real triplets")
    s.set_defaults(func=run_study)

    v = cmds.add_parser("curve", help="baseline learning curve: validation recall every N Combiner steps, real only")
    v.add_argument("--data", default=DEFAULT_DATA, help="Morpho-MNIST folder (IDX + csv)")
    v.add_argument("--out", required=True, help="curve folder; a rerun with the same folder resumes")
    v.add_argument("--fraction", type=int_range("--fraction", 1, 100), default=30,
                   help="percent of the real training triplets (default 30)")
    v.add_argument("--seeds", type=_int_list("--seeds", 0), default=[0], help="seeds (default 0)")
    v.add_argument("--steps", type=positive_int("--steps"), default=1000, help="Combiner steps (default 1000)")
    v.add_argument("--every", type=positive_int("--every"), default=100, help="evaluate every N steps (default 100)")
    v.add_argument("--encoder-steps", type=positive_int("--encoder-steps"), default=300)
    v.add_argument("--encoder", default=None, help="a saved dual encoder to use instead of fitting one")
    v.add_argument("--finetune-image", action="store_true",
                   help="also train a copy of the image tower on the triplets (CLIP4Cir stage-1 style)")
    v.add_argument("--threads", type=positive_int("--threads"), default=1, help="torch CPU threads (default 1)")
    v.set_defaults(func=run_curve)

    e = cmds.add_parser("encoder", help="fit the compact dual encoder on (digit, caption) of the train split")
    e.add_argument("--data", default=DEFAULT_DATA)
    e.add_argument("--out", required=True, help="encoder folder (dual_encoder.json + dual_encoder.safetensors)")
    e.add_argument("--steps", type=positive_int("--steps"), default=300, help="contrastive steps, batch 256 (default 300)")
    e.add_argument("--seed", type=seed_arg(), default=0)
    e.add_argument("--threads", type=positive_int("--threads"), default=1)
    e.set_defaults(func=run_encoder)

    t = cmds.add_parser("triplets", help="write real Morpho-MNIST triplets of one split as a CIRR-format folder")
    t.add_argument("--data", default=DEFAULT_DATA)
    t.add_argument("--split", default="test", choices=("train", "val", "test"))
    t.add_argument("--seed", type=seed_arg(), default=0, help="seeds each reference's modification (default 0)")
    t.add_argument("--out", required=True)
    t.set_defaults(func=run_triplets)

    c = cmds.add_parser("classifier", help="train the digit classifier on the train split; prints test accuracy")
    c.add_argument("--data", default=DEFAULT_DATA)
    c.add_argument("--out", required=True)
    c.add_argument("--steps", type=positive_int("--steps"), default=400)
    c.add_argument("--seed", type=seed_arg(), default=0)
    c.add_argument("--threads", type=positive_int("--threads"), default=1)
    c.set_defaults(func=run_classifier)

    f = cmds.add_parser("finetune-perturber",
                        help="LoRA-tune a local causal LM to edit one caption attribute (pairs from the rule perturber)")
    f.add_argument("--model", required=True, help="local transformers causal-LM folder (safetensors)")
    f.add_argument("--out", required=True, help="adapter folder (peft LoRA, safetensors)")
    f.add_argument("--pairs", default=None, help="JSON list of [caption, edited caption]; default: made from --data")
    f.add_argument("--data", default=DEFAULT_DATA, help="Morpho-MNIST folder: train-split captions and rule edits")
    f.add_argument("--n-pairs", type=positive_int("--n-pairs"), default=500)
    f.add_argument("--steps", type=positive_int("--steps"), default=200)
    f.add_argument("--seed", type=seed_arg(), default=0)
    f.add_argument("--threads", type=positive_int("--threads"), default=1)
    f.set_defaults(func=run_finetune_perturber)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_study(args) -> int:
    check_out(args.out, inputs={"--data": args.data, "--synthetic": args.synthetic, "--encoder": args.encoder})
    import torch

    from ..retrieval.study import StudyConfig, format_table
    from ..retrieval.study import run_study as _run

    torch.set_num_threads(args.threads)
    cfg = StudyConfig(fractions=tuple(f / 100 for f in args.fractions), seeds=tuple(args.seeds),
                      encoder_steps=args.encoder_steps, combiner_steps=args.combiner_steps,
                      finetune_image=args.finetune_image, synthetic_per_batch=args.synthetic_per_batch,
                      synthetic_reference=args.synthetic_reference)
    result = _run(args.data, args.out, cfg, synthetic=args.synthetic, log=_log, encoder=args.encoder)
    print(format_table(result))
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def run_curve(args) -> int:
    check_out(args.out, inputs={"--data": args.data, "--encoder": args.encoder})
    import torch

    from ..retrieval.study import StudyConfig, format_curve, learning_curve

    torch.set_num_threads(args.threads)
    cfg = StudyConfig(seeds=tuple(args.seeds), encoder_steps=args.encoder_steps, finetune_image=args.finetune_image)
    result = learning_curve(args.data, args.out, fraction=args.fraction / 100, seeds=tuple(args.seeds),
                            steps=args.steps, every=args.every, config=cfg, encoder=args.encoder, log=_log)
    print(format_curve(result))
    print(f"curve: {Path(args.out) / 'curve.json'}")
    return 0


def run_encoder(args) -> int:
    check_out(args.out, inputs={"--data": args.data})
    import time

    import numpy as np
    import torch

    from ..data.morphomnist import load_morphomnist, split_indices
    from ..editing.captions import MODIFICATION_WORDS, VOCABULARY, AttributeCaptioner
    from ..retrieval.encoders import save_dual_encoder
    from ..retrieval.train import train_dual_encoder

    torch.set_num_threads(args.threads)
    data = load_morphomnist(args.data)
    tr = split_indices(len(data), "train")
    t0 = time.time()
    captions = AttributeCaptioner().caption(data.images[tr], data.labels[tr].tolist())
    x = torch.from_numpy(data.images[tr].astype(np.float32) / 255.0)[:, None]
    model = train_dual_encoder(x, captions, list(VOCABULARY) + list(MODIFICATION_WORDS), steps=args.steps,
                               seed=args.seed)
    save_dual_encoder(model, args.out)
    print(f"dual encoder: {args.steps} steps on {len(tr)} captioned digits in {time.time() - t0:.0f} s -> {args.out}")
    return 0


def run_triplets(args) -> int:
    check_out(args.out, inputs={"--data": args.data})
    import numpy as np
    from PIL import Image

    from ..data.morphomnist import load_morphomnist, split_indices
    from ..editing.captions import measure
    from ..io.manifest import atomic_path
    from ..retrieval.cirr import write_split, write_triplets
    from ..retrieval.real import build_real_triplets, image_name

    data = load_morphomnist(args.data)
    idx = split_indices(len(data), args.split)
    m_split = measure(data.images[idx])
    m = {k: np.zeros(len(data)) for k in m_split}
    for k, v in m_split.items():
        m[k][idx] = v
    triplets = build_real_triplets(idx, data.labels, m, seed=args.seed)
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    paths = {}
    for i in idx:
        name = image_name(i)
        paths[name] = f"./images/{name}.png"
        with atomic_path(out / "images" / f"{name}.png") as tmp:
            Image.fromarray(data.images[i]).save(tmp, format="PNG")
    write_split(out / f"split.rc2.{args.split}.json", paths)
    write_triplets(out / f"cap.rc2.{args.split}.json", triplets)
    print(f"{len(triplets)} triplets over {len(idx)} images -> {out}")
    return 0


def run_classifier(args) -> int:
    check_out(args.out, inputs={"--data": args.data})
    import numpy as np
    import torch

    from ..data.morphomnist import load_morphomnist, split_indices
    from ..io.manifest import atomic_write_json
    from ..retrieval.train import train_digit_classifier

    torch.set_num_threads(args.threads)
    data = load_morphomnist(args.data)
    tr, te = split_indices(len(data), "train"), split_indices(len(data), "test")
    x = torch.from_numpy(data.images.astype(np.float32) / 255.0)
    model = train_digit_classifier(x[tr], torch.from_numpy(data.labels[tr]), steps=args.steps, seed=args.seed)
    acc = float((model.predict(x[te].numpy()) == data.labels[te]).mean())
    model.save(args.out)
    atomic_write_json(Path(args.out) / "accuracy.json", {"test_accuracy": acc, "steps": args.steps, "seed": args.seed,
                                                         "test_images": len(te)})
    print(f"test accuracy {100 * acc:.2f} % on {len(te)} digits -> {args.out}")
    return 0


def run_finetune_perturber(args) -> int:
    check_out(args.out, inputs={"--model": args.model, "--data": getattr(args, "data", None)})
    import json

    import numpy as np
    import torch

    from ..editing.captions import AttributeCaptioner, RulePerturber, finetune_llm_perturber
    from ..errors import input_error

    torch.set_num_threads(args.threads)
    if args.pairs is not None:
        try:
            pairs = [(str(a), str(b)) for a, b in json.loads(Path(args.pairs).read_text())]
        except (OSError, ValueError, TypeError) as exc:
            raise input_error("--pairs", args.pairs, f"a JSON list of [caption, edited caption] ({exc})") from None
    else:
        from ..data.morphomnist import load_morphomnist, split_indices

        data = load_morphomnist(args.data)
        idx = split_indices(len(data), "train")[: args.n_pairs]
        captions = AttributeCaptioner().caption(data.images[idx], data.labels[idx].tolist())
        rng = np.random.default_rng(args.seed)
        pairs = [(c, RulePerturber().perturb(c, rng)[1]) for c in captions]
    out = finetune_llm_perturber(args.model, pairs, args.out, steps=args.steps, seed=args.seed)
    print(f"LoRA adapter on {len(pairs)} pairs -> {out}")
    return 0
