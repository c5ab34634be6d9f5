import json

import numpy as np
import pytest
import torch

from counterfactory.cli.main import main
from counterfactory.errors import ConfigError, InputError
from counterfactory.retrieval.study import StudyConfig, format_table, run_study, subset

CFG = StudyConfig(fractions=(0.5, 1.0), seeds=(0, 1), encoder_steps=3, combiner_steps=3)


def test_subsets_are_nested_and_seeded():
    a, b = subset(100, 0.1, 0), subset(100, 0.3, 0)
    assert len(a) == 10 and len(b) == 30 and set(a) <= set(b)
    assert not np.array_equal(subset(100, 0.3, 1), b)
    with pytest.raises(ConfigError, match=r"^fractions="):
        StudyConfig(fractions=(0.0,))


def test_study_runs_pairs_resumes_and_reads_a_synthetic_folder(tiny_morpho, tmp_path, capsys):
    torch.set_num_threads(1)
    # a synthetic folder in the triplet-folder format: the real test-split triplets of the tiny set
    syn = tmp_path / "syn"
    assert main(["cir", "triplets", "--data", str(tiny_morpho), "--split", "train", "--out", str(syn)]) == 0
    assert (syn / "cap.rc2.train.json").is_file() and (syn / "split.rc2.train.json").is_file()

    out = tmp_path / "study"
    logs = []
    r = run_study(tiny_morpho, out, CFG, synthetic=syn, log=logs.append)
    assert len(r["runs"]) == 2 * 2 * 2
    for row in r["summary"]:
        assert row["n_seeds"] == 2 and 0.0 <= row["R@50"]["mean"] <= 100.0 and row["R@1"]["std"] >= 0
    assert [p["fraction"] for p in r["paired_difference"]] == [0.5, 1.0]
    pd = r["paired_difference"][0]["R@1"]
    runs = {(x["condition"], x["fraction"], x["seed"]): x["metrics"]["R@1"] for x in r["runs"]}
    diffs = [runs[("real+synthetic", 0.5, s)] - runs[("real", 0.5, s)] for s in (0, 1)]
    assert pd["n"] == 2 and pd["mean"] == pytest.approx(np.mean(diffs))
    assert "paired difference" in format_table(r)

    # resume: finished runs are read back, not recomputed
    before = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    again = run_study(tiny_morpho, out, CFG, synthetic=syn, log=logs.append)
    assert {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")} == before
    assert again["summary"] == r["summary"]
    # a rerun with other settings is refused
    with pytest.raises(InputError, match=r"^out="):
        run_study(tiny_morpho, out, StudyConfig(fractions=(1.0,), seeds=(0,), encoder_steps=4, combiner_steps=3))


def test_same_seed_same_result(tiny_morpho, tmp_path):
    torch.set_num_threads(1)
    cfg = StudyConfig(fractions=(1.0,), seeds=(3,), encoder_steps=2, combiner_steps=2)
    a = run_study(tiny_morpho, tmp_path / "a", cfg, log=lambda s: None)
    b = run_study(tiny_morpho, tmp_path / "b", cfg, log=lambda s: None)
    assert a["runs"][0]["metrics"] == b["runs"][0]["metrics"]
    from safetensors.torch import load_file

    wa, wb = load_file(str(tmp_path / "a/encoder/dual_encoder.safetensors")), load_file(str(tmp_path / "b/encoder/dual_encoder.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_cli_bad_input_is_one_line_exit_2(tiny_morpho, tmp_path, capsys):
    assert main(["cir", "study", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data=" in err[0]
    with pytest.raises(SystemExit) as e:
        main(["cir", "study", "--out", str(tmp_path / "o"), "--fractions", "0,30"])
    assert e.value.code == 2 and "--fractions='0,30'" in capsys.readouterr().err
    bad = tmp_path / "syn_bad"
    bad.mkdir()
    (bad / "cap.rc2.train.json").write_text(json.dumps([{"pairid": 1, "reference": "x"}]))
    (bad / "split.rc2.train.json").write_text("{}")
    assert main(["cir", "study", "--data", str(tiny_morpho), "--out", str(tmp_path / "o2"), "--synthetic", str(bad),
                 "--encoder-steps", "1", "--combiner-steps", "1", "--seeds", "0", "--fractions", "100"]) == 2
    assert "missing caption" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()  # nothing half-written


def test_digit_classifier_round_trip_and_edit_filter(tiny_morpho, tmp_path, capsys):
    from counterfactory.data.morphomnist import load_morphomnist
    from counterfactory.editing.captions import check_edit
    from counterfactory.retrieval.train import DigitClassifier

    torch.set_num_threads(1)
    assert main(["cir", "classifier", "--data", str(tiny_morpho), "--out", str(tmp_path / "clf"), "--steps", "40"]) == 0
    acc = json.loads((tmp_path / "clf" / "accuracy.json").read_text())["test_accuracy"]
    assert acc >= 0.75  # two easy classes (bar vs bar with a foot)
    model = DigitClassifier.load(tmp_path / "clf")
    d = load_morphomnist(tiny_morpho)
    x = d.images[:8].astype(np.float32) / 255
    assert np.array_equal(model.predict(x), DigitClassifier.load(tmp_path / "clf").predict(x))
    r = check_edit(d.images[:8], d.images[:8], "thickness", 1, classifier=model.predict, labels=d.labels[:8])
    assert r["moved"].sum() == 0 and r["others_ok"].all() and r["class_kept"].dtype == bool
    with pytest.raises(Exception, match=r"classifier="):
        DigitClassifier.load(tmp_path / "nope")


def test_encoder_command_curve_and_shared_encoder(tiny_morpho, tmp_path, capsys):
    """`cir encoder` writes a dual encoder that `cir curve` and `run_study(encoder=)` reuse; the curve's evaluation
    does not change the trained weights (the last point equals a study run with as many steps)."""
    from counterfactory.retrieval.study import learning_curve

    torch.set_num_threads(1)
    enc = tmp_path / "enc"
    assert main(["cir", "encoder", "--data", str(tiny_morpho), "--out", str(enc), "--steps", "3"]) == 0
    assert (enc / "dual_encoder.safetensors").is_file()
    assert main(["cir", "curve", "--data", str(tiny_morpho), "--out", str(tmp_path / "c"), "--encoder", str(enc),
                 "--fraction", "100", "--steps", "4", "--every", "2", "--seeds", "0,1"]) == 0
    printed = capsys.readouterr().out
    assert "| Combiner steps |" in printed
    c = json.loads((tmp_path / "c" / "curve.json").read_text())
    assert [row["step"] for row in c["curve"]] == [2, 4] and c["val_queries"] > 0
    assert c["curve"][0]["R@1"]["std"] >= 0 and not (tmp_path / "c" / "encoder").exists()
    again = learning_curve(tiny_morpho, tmp_path / "c", fraction=1.0, seeds=(0, 1), steps=4, every=2,
                           config=StudyConfig(seeds=(0, 1), encoder_steps=300), encoder=enc, log=lambda s: None)
    assert again["curve"] == c["curve"]  # resumed from the per-seed files
    # the last curve point is a real run: a study with the same encoder, steps and seed gives the same weights;
    # the study scores the test split, so compare on the models directly
    from counterfactory.retrieval.encoders import load_dual_encoder
    from counterfactory.retrieval.train import train_combiner

    e = load_dual_encoder(enc)
    f = torch.nn.functional.normalize(torch.randn(6, e.cfg.embed_dim, generator=torch.Generator().manual_seed(0)), dim=-1)
    texts = ["make it thicker", "make it thinner"] * 3
    seen = []
    a = train_combiner(e, f, texts, f.flip(0), steps=4, seed=0, evaluate=lambda s, m: seen.append(s), eval_every=2)
    b = train_combiner(e, f, texts, f.flip(0), steps=4, seed=0)
    assert seen == [2, 4]
    assert all(torch.equal(x, y) for x, y in zip(a.combiner.state_dict().values(), b.combiner.state_dict().values()))
    r = run_study(tiny_morpho, tmp_path / "s", StudyConfig(fractions=(1.0,), seeds=(0,), encoder_steps=3,
                                                            combiner_steps=2), encoder=enc, log=lambda s: None)
    assert r["settings"]["encoder"] == str(enc.resolve()) and not (tmp_path / "s" / "encoder").exists()
    with pytest.raises(SystemExit) as ex:
        main(["cir", "curve", "--data", str(tiny_morpho), "--out", str(tmp_path / "c2"), "--fraction", "0"])
    assert ex.value.code == 2 and "--fraction" in capsys.readouterr().err


def test_finetuned_image_tower_trains_and_reencodes_the_gallery(tiny_morpho, tmp_path):
    from counterfactory.retrieval.encoders import load_dual_encoder

    torch.set_num_threads(1)
    enc = tmp_path / "enc"
    assert main(["cir", "encoder", "--data", str(tiny_morpho), "--out", str(enc), "--steps", "2"]) == 0
    cfg = StudyConfig(fractions=(1.0,), seeds=(0,), encoder_steps=2, combiner_steps=3, finetune_image=True)
    r = run_study(tiny_morpho, tmp_path / "s", cfg, encoder=enc, log=lambda s: None)
    assert r["settings"]["config"]["finetune_image"] is True and 0 <= r["runs"][0]["metrics"]["R@1"] <= 100
    from counterfactory.retrieval.train import train_combiner

    e = load_dual_encoder(enc)
    x = torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    m = train_combiner(e, x, ["make it thicker"] * 6, x.flip(0), steps=2, seed=0, finetune_image=True)
    assert m.finetuned_image
    assert not torch.equal(m.encoder.image.proj.weight, e.image.proj.weight)  # the copy trained
    assert torch.equal(load_dual_encoder(enc).image.proj.weight, e.image.proj.weight)  # the original did not
    frozen = train_combiner(e, e.encode_image(x).detach(), ["make it thicker"] * 6, e.encode_image(x.flip(0)).detach(),
                            steps=2, seed=0)
    assert torch.equal(frozen.encoder.image.proj.weight, e.image.proj.weight)


def test_synthetic_triplets_ride_on_the_same_real_batches():
    from counterfactory.retrieval.encoders import DualEncoder, DualEncoderConfig, WordVocabulary
    from counterfactory.retrieval.train import batch_indices, train_combiner

    plain, mixed = batch_indices(50, 8, seed=3), batch_indices(50, 8, seed=3, n_extra=5, extra_per_batch=4)
    for _ in range(5):
        (r1, e1), (r2, e2) = next(plain), next(mixed)
        assert torch.equal(r1, r2) and len(e1) == 0 and len(e2) == 4 and int(e2.max()) < 5
    assert len(next(batch_indices(50, 8, 0, n_extra=2, extra_per_batch=4))[1]) == 2  # at most the extras there are
    torch.set_num_threads(1)
    e = DualEncoder(DualEncoderConfig(), WordVocabulary(["make", "it", "thicker"]))
    g = torch.Generator().manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(12, 64, generator=g), dim=-1)
    s = torch.nn.functional.normalize(torch.randn(4, 64, generator=g), dim=-1)
    texts = ["make it thicker"] * 12
    a = train_combiner(e, f, texts, f.flip(0), steps=2, seed=0)
    b = train_combiner(e, f, texts, f.flip(0), steps=2, seed=0)
    c = train_combiner(e, f, texts, f.flip(0), steps=2, seed=0, synthetic=(s, ["make it thicker"] * 4, s.flip(0)))
    sa, sb, sc = (m.combiner.state_dict() for m in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and not all(torch.equal(sa[k], sc[k]) for k in sa)
    with pytest.raises(InputError, match=r"^synthetic="):
        train_combiner(e, f, texts, f, steps=1, synthetic=(s, ["make it thicker"] * 3, s))


def test_nearest_digits_follow_the_real_targets_distance():
    from counterfactory.editing.captions import CHECKED_ATTRIBUTES
    from counterfactory.retrieval.study import nearest_digits

    labels = np.array([1, 1, 1, 2, 2, 1])
    m = {a: np.zeros(6) for a in CHECKED_ATTRIBUTES}
    m["thickness"] = np.array([1.0, 1.1, 3.0, 1.05, 9.0, 1.1])
    near = nearest_digits([0, 2, 3], np.arange(6), labels, m)
    # 0 → 1 (tie with 5 at the same distance goes to the lower index); 2 → the thickest other 1; 3 → the other 2
    assert near.tolist() == [1, 1, 4]
    assert nearest_digits([0], [0, 2], labels, m).tolist() == [2]  # only the pool counts, never itself
    with pytest.raises(InputError, match=r"^indices=3"):
        nearest_digits([3], [0, 1, 3], labels, m)


def test_study_with_nearest_references_pairs_the_synthetic_target_with_another_digit(tiny_morpho, tmp_path, capsys,
                                                                                      monkeypatch):
    """`synthetic_reference="nearest"` hands the Combiner the edited digits' nearest same-class twins as synthetic
    references (the targets unchanged); the real-only runs are the same as with the edited digits as references."""
    import counterfactory.retrieval.train as train_mod
    from counterfactory.data.morphomnist import load_morphomnist, split_indices
    from counterfactory.retrieval.real import image_index
    from counterfactory.retrieval.study import _images, load_synthetic, nearest_digits

    torch.set_num_threads(1)
    syn = tmp_path / "syn"
    assert main(["cir", "triplets", "--data", str(tiny_morpho), "--split", "train", "--out", str(syn)]) == 0
    with pytest.raises(ConfigError, match=r"^synthetic_reference='twin'"):
        StudyConfig(synthetic_reference="twin")
    seen = {}
    real_train = train_mod.train_combiner

    def spy(*args, synthetic=None, **kw):
        if synthetic is not None:
            seen[len(seen)] = synthetic
        return real_train(*args, synthetic=synthetic, **kw)

    monkeypatch.setattr(train_mod, "train_combiner", spy)
    # a trained image tower takes pixels, so the references handed over can be compared with the digits
    cfg = dict(fractions=(1.0,), seeds=(0,), encoder_steps=3, combiner_steps=3, finetune_image=True)
    own = run_study(tiny_morpho, tmp_path / "own", StudyConfig(**cfg), synthetic=syn, log=lambda s: None)
    near = run_study(tiny_morpho, tmp_path / "near", StudyConfig(**cfg, synthetic_reference="nearest"),
                     synthetic=syn, log=lambda s: None)
    assert near["settings"]["config"]["synthetic_reference"] == "nearest"
    real_runs = lambda r: [x["metrics"] for x in r["runs"] if x["condition"] == "real"]  # noqa: E731
    assert real_runs(own) == real_runs(near)

    s = load_synthetic(syn)
    data = load_morphomnist(tiny_morpho)
    own_idx = [image_index(n) for n in s.reference_names]
    m = dict(np.load(tmp_path / "near" / "measurements.npz"))
    twins = nearest_digits(own_idx, split_indices(len(data), "train"), data.labels, m)
    assert all(t != o and data.labels[t] == data.labels[o] for t, o in zip(twins, own_idx))
    (ref_own, _, tgt_own), (ref_near, _, tgt_near) = seen[0], seen[1]
    assert torch.equal(ref_own, s.references) and torch.equal(ref_near, _images(data.images, twins))
    assert not torch.equal(ref_near, ref_own) and torch.equal(tgt_near, tgt_own)
    with pytest.raises(SystemExit) as ex:
        main(["cir", "study", "--data", str(tiny_morpho), "--out", str(tmp_path / "bad"), "--synthetic", str(syn),
              "--synthetic-reference", "twin"])
    assert ex.value.code == 2 and "--synthetic-reference" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()
