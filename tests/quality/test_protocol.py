"""Pieces of the multi-seed protocol that need no training: aggregation, the seed summary, the table."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from worker.core.inversion import ddim_invert
from worker.core.scoring import latent_nll
from worker.core.train import TrainConfig
from worker.quality.protocol import METRICS, aggregate, markdown, run_steps, stored_train_config, summarise


def test_neighbourhood_mean_averages_what_exists_at_the_edges():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    out = aggregate(x, 3)
    assert out.shape == x.shape
    assert out[0, 0, 1, 1] == pytest.approx(x[0, 0, :3, :3].mean())
    assert out[0, 0, 0, 0] == pytest.approx(x[0, 0, :2, :2].mean())  # corner: 4 neighbours, no zero padding
    assert torch.equal(aggregate(x, 1), x)


def test_a_stored_run_is_reused_only_for_the_same_training_and_step_counts():
    """Runs stored before a setting existed ran with its default; their step counts come from their rows."""
    old = {"train_config": {"iterations": 300}, "rows": {"S=3 nll": {}, "S=5 nll": {}, "per-position gaussian": {}}}
    assert run_steps(old) == {3, 5}
    assert run_steps({**old, "steps": [3, 2]}) == {2, 3}
    assert stored_train_config(old) == {**vars(TrainConfig()), "iterations": 300}
    assert stored_train_config(old) != vars(TrainConfig(iterations=300, timestep_grid=3))


def test_summary_gives_mean_and_sample_spread_per_variant_over_seeds():
    runs = [{"hypothesis": "base", "rows": {"S=3 map_max": {k: v for k in METRICS}}} for v in (0.7, 0.8, 0.9)]
    summary = summarise(runs)
    auroc = summary["base / S=3 map_max"]["image_auroc"]
    assert auroc["mean"] == pytest.approx(0.8)
    assert auroc["std"] == pytest.approx(np.std([0.7, 0.8, 0.9], ddof=1))
    assert auroc["values"] == [0.7, 0.8, 0.9]
    assert "| base / S=3 map_max | 0.800 ± 0.100 |" in markdown(summary, [0, 1, 2])


def test_scoring_variants_standardise_each_class_on_its_calibration_normals():
    """Two classes whose normal features differ by an offset: every variant's scores of both classes' normals
    land on one scale, and a defect (a bump in one cell) outranks the normals of either class."""
    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig, build_detector
    from worker.quality.protocol import scoring_variants

    torch.manual_seed(0)
    detector = build_detector(DetectorConfig(image_size=64, classes=("a", "b"), map_backbone=""),
                              TrainConfig(width=16, num_blocks=1)).eval()
    c, g = detector.extractor.channels, detector.extractor.grid

    def normals(n, label):
        return torch.randn(n, c, g, g) * (1 + label) + 3 * label, torch.full((n,), label)

    sets = {name: [normals(n, 0), normals(n, 1)] for name, n in (("train", 40), ("calib", 30), ("test", 20))}
    feats = {k: torch.cat([f for f, _ in v]) for k, v in sets.items()}
    labels = {k: torch.cat([lab for _, lab in v]) for k, v in sets.items()}
    bumped = feats["test"][[0, 20]].clone()
    bumped[:, :, 1, 1] += 25.0  # one defective cell in an image of each class
    feats["test"] = torch.cat([feats["test"], bumped])
    labels["test"] = torch.cat([labels["test"], torch.tensor([0, 1])])
    feats["loc"], labels["loc"] = feats["test"], labels["test"]
    out = scoring_variants(detector, feats, labels, steps_list=(1,), reconstruction=False)
    for variant, (scores, grid, ms) in out["test"].items():
        assert scores.shape == (42,) and grid.shape == (42, g, g) and ms >= 0
        normal = scores[:40]
        assert abs(float(normal[:20].mean() - normal[20:].mean())) < 1.5, variant  # one scale for both classes
        if "max" in variant or "gaussian" in variant:  # a top-16 mean of this 4 x 4 grid dilutes one cell
            assert float(scores[40:].min()) > float(normal.max()), variant
    # the NLL paired with the last latent's map and with the path's averaged map: means of standardised parts
    rows = out["test"]
    for top, combined in (("S=1 top16 mean", "S=1 nll+top16"), ("S=1 path ensemble top16", "S=1 nll+path top16")):
        torch.testing.assert_close(rows[combined][0], (rows["S=1 nll"][0] + rows[top][0]) / 2)


def test_companion_rows_add_the_other_detectors_map_as_a_standardised_part():
    """A backbone ensemble in the protocol: the NLL with the companion's top-16 mean, and with both
    detectors' top-16 means, are means of the (already standardised) parts; the joint row takes the top-16
    mean of both standardised maps averaged, standardised per class on the calibration normals; the rows'
    cost counts both detectors."""
    from worker.quality.protocol import HYPOTHESES, add_companion_rows

    g = torch.Generator().manual_seed(0)
    calib_labels, test_labels = torch.tensor([0] * 6 + [1] * 6), torch.tensor([0, 0, 1, 1, 1])

    def variants():
        out = {part: {row: (torch.randn(5, generator=g), torch.randn(5, 4, 4, generator=g), ms)
                      for row, ms in (("S=3 nll", 2.0), ("S=3 top16 mean", 2.0))} for part in ("test", "loc")}
        maps = torch.randn(12, 4, 4, generator=g) + 3 * calib_labels[:, None, None]  # class 1 runs hotter
        out["calib"] = {"maps": {"S=3 top16 mean": maps}, "labels": calib_labels, "classes": 2}
        out["labels"] = {"test": test_labels, "loc": test_labels}
        return out

    own, other = variants(), variants()
    add_companion_rows(own, other, steps_list=(3,))
    joint_calib = ((own["calib"]["maps"]["S=3 top16 mean"] + other["calib"]["maps"]["S=3 top16 mean"]) / 2)
    joint_calib = joint_calib.flatten(1).sort(dim=1, descending=True).values[:, :16].mean(1)
    for part in ("test", "loc"):
        rows, its = own[part], other[part]
        assert rows["S=3 companion top16 mean"] is its["S=3 top16 mean"]
        pair, three = rows["S=3 nll+companion top16"], rows["S=3 nll+top16+companion top16"]
        torch.testing.assert_close(pair[0], (rows["S=3 nll"][0] + its["S=3 top16 mean"][0]) / 2)
        torch.testing.assert_close(three[0], (rows["S=3 nll"][0] + rows["S=3 top16 mean"][0]
                                              + its["S=3 top16 mean"][0]) / 3)
        joint_map = (rows["S=3 top16 mean"][1] + its["S=3 top16 mean"][1]) / 2
        torch.testing.assert_close(three[1], joint_map)
        joint = joint_map.flatten(1).mean(1)  # a 4 x 4 map's top 16 is all of it
        for c in (0, 1):
            normals = joint_calib[calib_labels == c]
            chosen = test_labels == c
            joint[chosen] = (joint[chosen] - normals.mean()) / normals.std()
        score, grid, ms = rows["S=3 nll+joint top16"]
        torch.testing.assert_close(score, (rows["S=3 nll"][0] + joint) / 2, rtol=1e-4, atol=1e-4)
        assert torch.equal(grid, joint_map) and three[2] == pair[2] == ms == 4.0
    companions = [h.companion for h in HYPOTHESES.values() if h.companion]
    assert companions and all(c in HYPOTHESES and not HYPOTHESES[c].companion for c in companions)


def test_the_cli_lists_every_hypothesis():
    from worker.quality.cli import HYPOTHESIS_NAMES
    from worker.quality.protocol import HYPOTHESES

    assert HYPOTHESIS_NAMES == tuple(HYPOTHESES)


def _synthetic_cells(tmp_path, config, n):
    """Protocol data from n generated 64 px cells (alternating cell types): the training set, its first
    six cells as the test set and first four as the localisation set, features cached under INVAD_CACHE."""
    from synthetic import make_texture_images
    from worker.quality import protocol
    from worker.quality.features import raw_features

    paths = []
    for i, image in enumerate(make_texture_images(n, size=64)[0]):
        paths.append(tmp_path / f"cell{i:02d}.png")
        image.save(paths[-1])
    train = raw_features(config, "elpv-train", paths, progress=False)
    types = torch.tensor([i % 2 for i in range(n)])
    return protocol.Data(paths, train, train[:6], np.array([0, 0, 0, 1, 1, 1]), train[:4], np.array([0, 0, 1, 1]),
                         np.zeros((4, 64, 64), bool), {"train": types, "test": types[:6], "loc": types[:4]})


def test_an_augmenting_hypothesis_trains_on_every_view_and_keeps_one_view_for_statistics(tmp_path, monkeypatch):
    """type-flips: the denoiser learns the four views of each training cell (read from their own feature
    cache), while the sets that statistics and scores use hold each image once, with its cell type."""
    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig
    from worker.quality import protocol
    from worker.quality.features import cache_root

    monkeypatch.setenv("INVAD_CACHE", str(tmp_path / "cache"))
    config = DetectorConfig(image_size=64, map_backbone="")
    data = _synthetic_cells(tmp_path, config, 20)
    from worker.core import train as core_train

    learned = {}
    real_train_denoiser = core_train.train_denoiser

    def spy(model, features, labels, *args, **kwargs):
        learned.update(features=features, labels=labels)
        return real_train_denoiser(model, features, labels, *args, **kwargs)

    monkeypatch.setattr(core_train, "train_denoiser", spy)
    hypothesis = protocol.HYPOTHESES["type-flips"]
    base = TrainConfig(iterations=5, batch_size=4, width=16, num_blocks=1, warmup=1, calib_fraction=0.2)
    detector, feats, labels, _ = protocol.train_seed(data, config, hypothesis, 0, base)

    assert detector.classes == ("mono", "poly")
    assert set(feats) == set(labels) == {"train", "calib", "test", "loc"}
    assert len(feats["train"]) + len(feats["calib"]) == 20
    assert len(learned["features"]) == 4 * len(feats["train"])
    assert learned["labels"].tolist() == 4 * labels["train"].tolist()  # view-major, each row keeps its type
    # the first view: the training part as it is, in the denoiser's input space
    assert torch.equal(learned["features"][:len(feats["train"])], detector.denoiser_input(feats["train"], labels["train"]))
    assert len(list(cache_root().glob("*/elpv-train-flips-*.pt"))) == 1


def test_metrics_give_the_thresholds_rate_on_held_out_normals_and_localise_on_the_masks():
    from worker.quality.protocol import Data, _metrics

    scores = torch.tensor([0.1, 0.5, 2.0, 0.3, 3.0, 1.5])  # four normals, then two defective cells
    grid = torch.zeros(2, 4, 4)
    grid[1, 1, 2] = 5.0  # the defective localisation image is hot where its mask is
    masks = np.zeros((2, 16, 16), bool)
    masks[1, 4:8, 8:12] = True
    data = Data(train_paths=[], train=torch.empty(0), test=torch.empty(0), test_labels=np.array([0, 0, 0, 0, 1, 1]),
                loc=torch.empty(0), loc_labels=np.array([0, 1]), loc_masks=masks, types={})
    loc_scores = torch.tensor([0.0, 5.0])
    variants = {"test": {"shipped": (scores, None, 1.0), "variant": (scores, None, 2.0)},
                "loc": {"shipped": (loc_scores, grid, 1.0), "variant": (loc_scores, grid, 2.0)},
                "thresholds": {"shipped": 1.0}}
    rows = _metrics(variants, data, 16, 0.0)
    assert rows["shipped"]["test_fpr"] == 0.25  # one of the four normals scores above 1.0
    assert "test_fpr" not in rows["variant"]  # a variant without a calibrated threshold has no rate
    assert rows["shipped"]["image_auroc"] == 0.875 and rows["shipped"]["loc_image_auroc"] == 1.0
    assert rows["shipped"]["pixel_auroc"] > 0.95 and rows["variant"]["aupro"] == rows["shipped"]["aupro"] > 0.5


def test_cluster_classes_are_found_on_training_normals_and_nest_inside_cell_types():
    """clusters=2 finds two groups of cells with no labels; with by_type each type is split on its own
    (four classes, never mixing types); test cells take the nearest centre of their type."""
    from worker.quality.protocol import Data, Hypothesis, class_labels

    rng = torch.Generator().manual_seed(0)

    def cells(n, offset):  # (n, 3, 2, 2) feature grids around a per-group level
        return torch.randn(n, 3, 2, 2, generator=rng) * 0.1 + offset

    groups = [cells(10, 0.0), cells(10, 5.0), cells(10, 10.0), cells(10, 15.0)]  # type 0: groups 0-1, type 1: 2-3
    train = torch.cat(groups)
    types = torch.tensor([0] * 20 + [1] * 20)
    test = torch.cat([cells(1, 5.0), cells(1, 15.0)])
    data = Data([], train, test, np.array([0, 1]), test, np.array([0, 1]), np.zeros((2, 4, 4), bool),
                {"train": types, "test": torch.tensor([0, 1]), "loc": torch.tensor([0, 1])})

    names, labels = class_labels(data, Hypothesis("one", clusters=1), seed=0)
    assert names == ("all",) and labels["train"].eq(0).all()
    names, labels = class_labels(data, Hypothesis("c2", clusters=2), seed=0)
    assert names == ("all-0", "all-1")
    assert labels["train"][:20].unique().numel() == 1 and labels["train"][20:].unique().numel() == 1
    assert labels["train"][0] != labels["train"][20]
    names, labels = class_labels(data, Hypothesis("t2", by_type=True, clusters=2), seed=0)
    assert names == ("mono-0", "mono-1", "poly-0", "poly-1")
    found = [set(labels["train"][i * 10:(i + 1) * 10].tolist()) for i in range(4)]
    assert all(len(f) == 1 for f in found) and len(set.union(*found)) == 4
    assert found[0] | found[1] == {0, 1} and found[2] | found[3] == {2, 3}  # types never mix
    assert {int(labels["test"][0])} == found[1] and {int(labels["test"][1])} == found[3]


def test_an_ensemble_is_scored_as_its_bundle_scores_it(tmp_path, monkeypatch):
    """An ensemble hypothesis trains its members on one split as invad train does (member 0 is the single
    denoiser of that seed), and the protocol's shipped row is the bundle's own calibrated score, with NLL and
    maps averaged over the members."""
    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig
    from worker.quality import protocol

    monkeypatch.setenv("INVAD_CACHE", str(tmp_path / "cache"))
    config = DetectorConfig(image_size=64, members=1, map_backbone="")
    data = _synthetic_cells(tmp_path, config, 24)
    base = TrainConfig(iterations=5, batch_size=4, width=16, num_blocks=1, warmup=1, calib_fraction=0.25)
    pair = protocol.Hypothesis("pair", detector={"members": 2}, by_type=True)
    single, feats1, _, _ = protocol.train_seed(data, config, protocol.HYPOTHESES["type"], 7, base)
    ensemble, feats, labels, _ = protocol.train_seed(data, replace(config, **pair.detector), pair, 7, base)
    assert ensemble.config.members == 2 and all(torch.equal(feats[k], feats1[k]) for k in feats)  # one split
    first, second = (d.proj_in.weight for d in ensemble.denoisers)
    assert torch.equal(first, single.denoisers[0].proj_in.weight) and not torch.equal(first, second)

    out = protocol.scoring_variants(ensemble, feats, labels, steps_list=(1,), reconstruction=False)
    shipped = "S=1 shipped (nll+map_top)"
    for part in ("test", "loc"):
        comps, grid = ensemble.score_features(feats[part], labels[part], "inversion", 1)  # the bundle's code
        torch.testing.assert_close(out[part][shipped][0], ensemble.combine(comps, labels[part]))
        torch.testing.assert_close(out[part][shipped][1], grid)
        x = ensemble.denoiser_input(feats[part], labels[part])
        members = [ddim_invert(ensemble.eps_fn(labels[part], m), x, ensemble.alphas_cumprod, [0, 999]) for m in range(2)]
        nll = (latent_nll(members[0]) + latent_nll(members[1])) / 2
        torch.testing.assert_close(comps["nll"], nll)


def test_a_map_backbone_is_scored_as_its_bundle_scores_it(tmp_path, monkeypatch):
    """With a map backbone the protocol trains its ensemble as a detector of that backbone alone would be
    trained on the same split (so the companion rows measure the same thing), and its shipped row is the
    bundle's own calibrated score, whose map averages both ensembles' standardised maps."""
    from worker.core.config import DetectorConfig
    from worker.core.train import TrainConfig
    from worker.quality import protocol

    monkeypatch.setenv("INVAD_CACHE", str(tmp_path / "cache"))
    config = DetectorConfig(image_size=64, members=1, map_backbone="")
    with_map = protocol.Hypothesis("map", detector={"map_backbone": "efficientnet-lite2"}, by_type=True)
    alone = protocol.Hypothesis("lite2", detector={"backbone": "efficientnet-lite2"}, by_type=True)
    base = TrainConfig(iterations=5, batch_size=4, width=16, num_blocks=1, warmup=1, calib_fraction=0.25)

    def trained(hypothesis):  # the same generated cells, with the features of the hypothesis's backbone(s)
        config_h = replace(config, **hypothesis.detector)
        return protocol.train_seed(_synthetic_cells(tmp_path, config_h, 24), config_h, hypothesis, 3, base)

    detector, feats, labels, _ = trained(with_map)
    lite2, lite2_feats, _, _ = trained(alone)
    group = detector.channel_groups[1]
    torch.testing.assert_close(feats["test"][:, group], lite2_feats["test"], rtol=1e-4, atol=1e-4)  # per channel
    torch.testing.assert_close(detector.map_denoisers[0].proj_in.weight, lite2.denoisers[0].proj_in.weight)

    out = protocol.scoring_variants(detector, feats, labels, steps_list=(1,), reconstruction=False)
    shipped = protocol.shipped_row(detector.config, 1)
    assert shipped == "S=1 shipped (nll+map_top+map_backbone.map_top)"
    for part in ("test", "loc"):
        comps, grid = detector.score_features(feats[part], labels[part], "inversion", 1)  # the bundle's code
        torch.testing.assert_close(out[part][shipped][0], detector.combine(comps, labels[part]))
        torch.testing.assert_close(out[part][shipped][1], grid)
        raw = detector.raw_maps(feats[part], labels[part], steps=1)
        own = (raw["norm"] - detector.position_mean[labels[part]]) / detector.position_std[labels[part]]
        its = (raw["map_norm"] - detector.map_position_mean[labels[part]]) / detector.map_position_std[labels[part]]
        torch.testing.assert_close(grid, (own + its) / 2)
