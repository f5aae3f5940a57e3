"""report.py: the study's tables and sentences rendered from results.json, and the blocks they fill."""

import json

import pytest

from difflab.study import page_tables, report


def row(model, fids, accs=None, floor=2.0, **extra):
    """A results.json row with seeds, as compare.add_seeds leaves it."""
    accs = accs or [0.97] * len(fids)
    mean = sum(fids) / len(fids)
    spread = (sum((f - mean) ** 2 for f in fids) / (len(fids) - 1)) ** 0.5 if len(fids) > 1 else 0.0
    return {"model": model, "params": 1_600_000, "images_seen": 60_000, "train_images_per_s": 150.0,
            "fid": fids[0], "fid_floor": floor, "accuracy": accs[0], "precision": 0.8, "recall": 0.8,
            "sampler": "ddim", "steps": 50, "cfg_scale": 1.5, "seconds_per_1000": 200.0,
            "fid_seeds": fids, "fid_mean": mean, "fid_spread": spread,
            "accuracy_seeds": accs, "accuracy_mean": None if None in accs else sum(accs) / len(accs),
            "accuracy_spread": 0.0, **extra}


def test_an_ordering_says_whether_the_seed_spreads_overlap():
    sd1 = row("unified_sd1_unet_eps", [6.0, 6.4, 6.2])
    apart = row("unified_sd2_unet_v", [4.0, 4.2, 4.4])  # 6.2 +- 0.2 against 4.2 +- 0.2: apart
    close = row("unified_sd2_unet_v", [5.9, 6.5, 6.2])  # 6.2 +- 0.3: the same
    assert ("lowered the FID from 6.20 +- 0.20 to 4.20 +- 0.20: the spreads do not overlap"
            in report.orderings([sd1, apart]))
    assert "the spreads overlap, so this budget does not order the two" in report.orderings([sd1, close])
    one_seed = report.orderings([row("unified_sd1_unet_eps", [6.0]), row("unified_sd2_unet_v", [7.0])])
    assert "raised the FID from 6.00 to 7.00: one seed each, so seed noise is not measured" in one_seed


def test_the_goal_line_says_how_far_each_row_is():
    text = report.orderings([row("unified_sd1_unet_eps", [5.0, 5.0]), row("unified_sd2_unet_v", [3.5, 4.1])])
    assert "SD1 U-Net eps: 2.5x the floor; the goal of 2x (4.00): misses by 1.00 FID." in text
    assert "SD2 U-Net v: 1.9x the floor; the goal of 2x (4.00): meets." in text


def test_a_row_with_one_seed_is_ordered_against_the_other_rows_seed_spread():
    sd1 = row("unified_sd1_unet_eps", [6.0, 6.4, 6.2])  # 6.20 +- 0.20
    near, far = row("unet_x0_prediction", [6.3]), row("unet_x0_prediction", [9.0])
    assert ("U-Net x0 has one seed; the gap is not larger than SD1 U-Net eps's seed spread (0.20)"
            in report.orderings([sd1, near]))
    assert ("U-Net x0 has one seed; the gap is larger than SD1 U-Net eps's seed spread (0.20)"
            in report.orderings([sd1, far]))
    note = report.table([sd1, far]).splitlines()[-1]
    assert "over 3 training seeds (one seed, no spread: U-Net x0)" in note


def test_a_reference_row_is_held_to_the_studys_bar_not_the_milestones_goal():
    text = report.orderings([row("unet_x0_prediction", [5.0], accs=[0.97]), row("ldm_latent", [7.0], accs=[0.90]),
                             row("ddpm_original", [30.0], accs=[None])])
    assert "U-Net x0: 2.5x the floor; the study's bar of 3x (6.00) and 95% accuracy: meets." in text
    assert "misses: FID by 1.00, accuracy by 5.0 points." in text  # the latent row
    assert "15.0x the floor; unconditional, so not held to the study's bar" in text  # asked for no digit


def test_the_table_is_in_the_history_order_with_the_vae_images():
    rows = [row("ldm_latent", [9.0], vae_images_seen=120_000), row("unified_sd1_unet_eps", [6.0])]
    lines = report.table(rows).splitlines()
    assert lines[2].startswith("| SD1 U-Net eps |") and lines[3].startswith("| latent U-Net eps")
    assert "60,000 (+ 120,000 for the VAE)" in lines[3] and "| 4.5 |" in lines[3]  # 9.0 / 2.0 floor
    assert "mean +- spread" not in lines[0]  # one seed: plain values


def test_publish_fills_the_blocks_from_its_json_and_leaves_others(tmp_path):
    (tmp_path / "docs").mkdir()
    results = {"rows": [row("unified_sd1_unet_eps", [6.0, 6.4]), row("unified_sd2_unet_v", [4.0, 4.4])], "seconds": {}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    block = "<!-- generated from docs/results/study.json: {} -->\nstale text\n<!-- end of generated block -->"
    other = "<!-- generated from docs/results/other.json: table -->\nkept\n<!-- end of generated block -->"
    (tmp_path / "README.md").write_text("# x\n" + block.format("table") + "\n\n" + other + "\n")
    (tmp_path / "docs" / "03.md").write_text("text\n" + block.format("effect unified_sd2_unet_v") + "\n")
    (tmp_path / "docs" / "plain.md").write_text("no blocks\n")
    changed = report.publish(tmp_path / "results.json", "study", tmp_path)
    assert sorted(p.name for p in changed) == ["03.md", "README.md"]
    readme = (tmp_path / "README.md").read_text()
    assert "stale text" not in readme and "| SD2 U-Net v |" in readme and "\nkept\n" in readme
    page = (tmp_path / "docs" / "03.md").read_text()
    assert "eps -> v (SD1 U-Net eps -> SD2 U-Net v) lowered the FID from 6.20 +- 0.28 to 4.20 +- 0.28" in page
    assert json.loads((tmp_path / "docs" / "results" / "study.json").read_text()) == results
    assert report.publish(tmp_path / "results.json", "study", tmp_path) == []  # a second time: nothing to change


def test_an_unknown_block_kind_or_row_is_an_error():
    results = {"rows": [row("unified_sd1_unet_eps", [6.0])]}
    with pytest.raises(ValueError, match="unknown kind"):
        report.render("pie chart", results)
    with pytest.raises(KeyError, match="no row for 'dit_transformer'"):
        report.render("effect dit_transformer", results)


def test_the_sweeps_table_has_a_column_per_value_and_a_row_per_model():
    point = lambda what, v, fid: {what: v, "fid": fid, "accuracy": 0.9, "fid_floor": 20.0}  # noqa: E731
    results = {"rows": [], "sweeps": {
        "cfg_scale": {"unified_sd2_unet_v": [point("cfg_scale", 1, 30.0), point("cfg_scale", 7.5, 50.0)],
                      "unified_sd1_unet_eps": [point("cfg_scale", 1, 31.0)]},
        "steps": {"unified_sd1_unet_eps": [point("steps", 10, 40.0), point("steps", 50, 35.0)]}}}
    lines = report.render("sweeps", results).splitlines()
    assert lines[0] == "| guidance scale | 1 | 7.5 |"
    assert lines[2] == "| SD1 U-Net eps | 31.0 (90%) |  |" and lines[3] == "| SD2 U-Net v | 30.0 (90%) | 50.0 (90%) |"
    assert "| sampling steps | 10 | 50 |" in lines and "floor 20.00 at this n" in lines[5]


def test_the_fewstep_table_counts_the_teachers_images_and_the_speed_up_against_its_default():
    def point(nfe, fid, acc, s):
        return {"steps": nfe, "nfe": nfe, "fid": fid, "accuracy": acc, "fid_floor": 2.0, "seconds_per_1000": s}

    teacher = row("unified_sd2_unet_v", [4.0], [0.95], nfe=100, seconds_per_1000=200.0, checkpoint="t/last.pt")
    student = row("sd2_consistency_distill", [6.0], nfe=2, seconds_per_1000=5.0, images_seen=30000,
                  teacher="t/last.pt", fewstep="consistency_distillation")
    scratch = row("sd3_shortcut", [9.0], nfe=2, seconds_per_1000=8.0, fewstep="shortcut")
    results = {"n": 1000, "rows": [student, teacher, scratch],
               "sweeps": {"steps": {"sd2_consistency_distill": [point(1, 12.0, 0.9, 3.0), point(2, 6.0, 0.97, 5.0)],
                                    "unified_sd2_unet_v": [point(2, 80.0, 0.5, 4.0)]}}}
    text = report.render("fewstep", results)
    lines = text.splitlines()
    assert lines[0].startswith("| model | training images | NFE 1 | NFE 2 |")
    assert lines[2].startswith("| SD2 U-Net v | 60,000 |  | 80.00 (50%) | 4.00 (95%), 100 | 200 |")  # the teacher first
    assert "| 30,000 + 60,000 (teacher) | 12.00 (90%) | 6.00 (97%) |" in lines[3]
    assert lines[3].endswith("| 5 (40x faster than SD2 U-Net v) |")
    assert "SD3 MMDiT shortcut model | 60,000 |" in lines[4] and "faster" not in lines[4]  # its baseline is absent


def evaluation(fid, accuracy, cfg_scale=1.5, n=500):
    """An evaluate.py output (--out FILE.json), the keys a table needs and a few it keeps."""
    return {"fid": fid, "fid_floor": 5.45, "accuracy": accuracy, "precision": 0.8, "recall": 0.8, "n": n,
            "sampler": "ddim", "steps": 50, "nfe": 50, "cfg_scale": cfg_scale, "checkpoint": "a.pt", "config": "x"}


def test_a_pages_own_measurements_are_published_from_evaluate_outputs(tmp_path, monkeypatch):
    from difflab.commands.compare import main

    (tmp_path / "docs").mkdir()
    (tmp_path / "a.json").write_text(json.dumps(evaluation(10.891, 0.962, 1.75)))
    (tmp_path / "b.json").write_text(json.dumps(evaluation(8.2, None, 1.0)))  # unconditional: no accuracy
    block = ("<!-- generated from docs/results/tuning.json: evaluations -->\nhand-typed 9.99\n"
             "<!-- end of generated block -->")
    (tmp_path / "README.md").write_text("# x\n")
    (tmp_path / "docs" / "page.md").write_text("text\n" + block + "\n")
    monkeypatch.chdir(tmp_path)
    assert main(["--evaluations", "CFG 1.75, eta=1=a.json", "no labels=b.json", "--as", "tuning"]) == 0
    page = (tmp_path / "docs" / "page.md").read_text()
    assert "9.99" not in page
    assert "| CFG 1.75, eta=1 | 10.89 | 5.45 | 96.2% | ddim x50, CFG 1.75 | 500 |" in page  # the label may hold '='
    assert "| no labels | 8.20 | 5.45 | n/a | ddim x50, CFG 1 | 500 |" in page
    published = json.loads((tmp_path / "docs" / "results" / "tuning.json").read_text())
    assert published["kind"] == "evaluations" and published["rows"][0]["checkpoint"] == "a.pt"  # kept whole


def test_evaluations_refuse_what_is_not_an_evaluate_output(tmp_path, monkeypatch):
    from difflab.infra.failures import InputError, UsageError
    from difflab.commands.compare import main

    (tmp_path / "docs").mkdir()
    (tmp_path / "README.md").write_text("# x\n")
    (tmp_path / "results.json").write_text(json.dumps({"rows": []}))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match="not an evaluate.py output"):
        main(["--evaluations", "x=results.json", "--as", "t"])
    with pytest.raises(InputError, match="no such file"):
        main(["--evaluations", "x=missing.json", "--as", "t"])
    with pytest.raises(UsageError, match="LABEL=EVAL_JSON"):
        main(["--evaluations", "results.json", "--as", "t"])
    assert not (tmp_path / "docs" / "results").exists()  # nothing published


def test_models_of_prompts_are_compared_a_column_each():
    def scored(fid, slant_hit, seconds):
        a = {"prompts": 50, "per_prompt": 20, "accuracy": 0.9,
             "attributes": {"slant": {"hit_rate": slant_hit, "chance": 0.332, "correlation": 0.5}},
             "common_combinations": {"all_three_hit": 0.2, "chance": 0.086},
             "rare_combinations": {"all_three_hit": 0.02, "chance": 0.01}}
        return {**evaluation(fid, 0.97, n=1000), "seconds": seconds, "adherence": a}

    results = page_tables.gather_evaluations({"cross": scored(11.4, 0.838, 204.0), "joint": scored(27.7, 0.302, 582.0)})
    lines = report.render("adherence", results).splitlines()
    assert lines[0] == "| | cross | joint |"
    assert "| slant: hit (chance 33.2%) / correlation | 83.8% / 0.50 | 30.2% / 0.50 |" in lines
    assert '| FID from "a <digit>" (floor 5.45, N = 1000) | 11.40 | 27.70 |' in lines
    assert "| seconds per 1000 samples (50 steps) | 204 (CFG 1.5) | 582 (CFG 1.5) |" in lines
    with pytest.raises(ValueError, match="no prompt adherence in: labels"):
        report.render("adherence", page_tables.gather_evaluations({"labels": evaluation(5.0, 0.97)}))


def test_models_of_prompts_over_seeds_are_a_column_each_with_the_seeds_mean_and_spread():
    def scored(slant_hit, cfg_scale=1.5):
        a = {"prompts": 50, "per_prompt": 20, "accuracy": 0.9,
             "attributes": {"slant": {"hit_rate": slant_hit, "chance": 0.332, "correlation": 0.5}},
             "common_combinations": {"all_three_hit": 0.2, "chance": 0.086},
             "rare_combinations": {"all_three_hit": 0.02, "chance": 0.01}}
        return {**evaluation(10.0, 0.97, cfg_scale=cfg_scale, n=1000), "adherence": a}

    results = page_tables.gather_evaluations({
        "cross, seed 0": scored(0.80), "joint, seed 0": scored(0.90),
        "cross, seed 1": scored(0.84), "joint, seed 1": scored(0.90, cfg_scale=1.75)})
    lines = report.render("adherence over seeds", results).splitlines()
    assert lines[0] == "| | cross (2 seeds) | joint (2 seeds) |"  # seeds of one model gathered, in first-seen order
    assert "| slant: hit (chance 33.2%) | 82.0% +- 2.8 | 90.0% +- 0.0 |" in lines  # sample std of 80 and 84: 2.83
    assert "| slant: correlation | 0.50 +- 0.00 | 0.50 +- 0.00 |" in lines
    assert "| sampling | ddim x50, CFG 1.5 | ddim x50, CFG 1.5 / ddim x50, CFG 1.75 |" in lines  # mixed sampling shows
    one = report.render("adherence over seeds", page_tables.gather_evaluations({"cross, seed 0": scored(0.8)}))
    assert "| slant: hit (chance 33.2%) | 80.0% |" in one  # one seed: no spread to quote
    assert one.startswith("| | cross (1 seed) |") and "Mean +-" not in one and "no spread" in one
    assert "Mean +- sample standard deviation over training seeds;" in "\n".join(lines)
    with pytest.raises(ValueError, match="no prompt adherence in: labels, seed 0"):
        report.render("adherence over seeds", page_tables.gather_evaluations({"labels, seed 0": evaluation(5.0, 0.97)}))
    assert not any("CLIP score" in line for line in lines)  # scored before the tiny CLIP: no such rows

    def with_clip(slant_hit, clip_score, agreement):
        out = scored(slant_hit)
        out["adherence"]["clip"] = {"clip_score": clip_score, "real_images": 31.25, "all_asked_followed": 0.5,
                                    "correlation_over_prompts": agreement}
        return out

    lines = report.render("adherence over seeds", page_tables.gather_evaluations({
        "clip, seed 0": with_clip(0.8, 20.0, 0.6), "clip, seed 1": with_clip(0.8, 22.0, 0.8)})).splitlines()
    assert "| CLIP score (real images with their own prompts: 31.2) | 21.00 +- 1.41 |" in lines
    assert "| CLIP score's correlation over the prompts with following everything asked | 0.70 +- 0.14 |" in lines


def test_curves_put_each_models_steps_on_one_row():
    def row(label, fid, acc, n=1000, seconds=10.0):
        return {"label": label, "fid": fid, "accuracy": acc, "fid_floor": 2.26, "n": n, "seconds": seconds}

    rows = [row("teacher @ 1", 277.48, 0.998), row("teacher @ 2", 45.26, 0.993, seconds=12.0),
            row("student, 180,000 images @ 2", 9.5, None), row("teacher @ 8", 5.64, 0.984)]
    results = {"kind": "evaluations", "rows": rows}
    text = report.render("curves", results)
    lines = text.splitlines()
    assert lines[2] == "| teacher | 277.48 (100%) | 45.26 (99%) |  | 5.64 (98%) | 12 |"
    assert lines[3] == "| student, 180,000 images |  | 9.50 |  |  | 10 |"
    assert "N = 1000; floor 2.26" in text


def test_curves_over_seeds_put_each_models_seeds_mean_and_spread_in_one_cell():
    def row(label, fid, acc):
        return {"label": label, "fid": fid, "accuracy": acc, "fid_floor": 2.26, "n": 1000, "seconds": 10.0}

    rows = [row("student @ 2, seed 0", 7.0, 0.99), row("student @ 1, seed 0", 9.0, 0.98),
            row("student @ 2, seed 1", 9.0, 0.97), row("student @ 2, seed 2", 8.0, 0.98),
            row("student @ 1, seed 1", 11.0, 0.96), row("other @ 4, seed 0", 5.0, None)]
    text = report.render("curves over seeds", {"kind": "evaluations", "rows": rows})
    lines = text.splitlines()
    # NFE 2: mean 8.00, sample std 1.00; accuracy 98.0% +- 1.0; NFE 1 has two seeds only, so the row says 2
    assert lines[2] == "| student | 2 | 10.00 +- 1.41 (97.0% +- 1.4) | 8.00 +- 1.00 (98.0% +- 1.0) |  |  |"
    assert lines[3] == "| other | 1 |  |  | 5.00 |  |"  # one seed: no spread; no accuracy: none shown
    assert "over training seeds" in text and "floor 2.26" in text


def test_learning_curves_put_each_models_epochs_on_one_row_with_the_cost_of_its_last_point():
    def row(label, fid, acc, epoch, seconds, cpu_seconds=None):
        training = {"epoch": epoch, "images": 60000 * epoch, "seconds": seconds, "gflop_per_image": 1.08,
                    "pflop": 1.08 * 60000 * epoch / 1e6, "threads": 2}
        if cpu_seconds is not None:
            training["cpu_seconds"] = cpu_seconds
        return {"label": label, "fid": fid, "accuracy": acc, "fid_floor": 2.26, "n": 1000, "training": training}

    # SD2's record has CPU seconds (a paused run's wall seconds overstate it); the DiT's older record has only wall
    # seconds, read as every thread busy
    rows = [row("SD2 @ epoch 1", 4.14, 0.985, 1, 500.0, 900.0), row("DiT @ epoch 1", 5.38, 0.97, 1, 900.0),
            row("SD2 @ epoch 2", 3.50, 0.99, 2, 5000.0, 1800.0)]
    lines = report.render("learning curves", {"kind": "evaluations", "rows": rows}).splitlines()
    assert lines[0] == "| model | GFLOP / training image | epoch 1 | epoch 2 | training at the last point |"
    assert lines[2] == "| SD2 | 1.08 | 4.14 (98.5%) | 3.50 (99.0%) | 120,000 images, 0.13 PFLOP, 0.5 CPU h |"
    assert lines[3] == "| DiT | 1.08 | 5.38 (97.0%) |  | 60,000 images, 0.06 PFLOP, 0.5 CPU h |"  # not yet at epoch 2
    with pytest.raises(ValueError, match="no training record"):
        report.render("learning curves", {"kind": "evaluations", "rows": [{"label": "x @ epoch 1", "fid": 1.0}]})


def test_reframed_models_over_seeds_show_their_cut_off_and_tiny_digits():
    def framed(cut_off, tiny):
        return {**evaluation(6.0, 0.95), "framing": {"cut_off": cut_off, "tiny": tiny}}

    results = page_tables.gather_evaluations({"told nothing, seed 0": framed(0.30, 0.10),
                                              "told, seed 0": framed(0.02, 0.01),
                                              "told nothing, seed 1": framed(0.20, 0.12),
                                              "told, seed 1": framed(0.04, 0.01)})
    lines = report.render("framing over seeds", results).splitlines()
    assert lines[0] == "| asked for MNIST's own framing | told nothing (2 seeds) | told (2 seeds) |"
    assert "| digits cut off by the canvas | 25.0% +- 7.1 | 3.0% +- 1.4 |" in lines
    assert "| tiny digits (under 12 rows of ink) | 11.0% +- 1.4 | 1.0% +- 0.0 |" in lines
    with pytest.raises(ValueError, match="no framing in: plain"):
        report.render("framing over seeds", page_tables.gather_evaluations({"plain": evaluation(5.0, 0.97)}))


def test_a_pages_models_over_seeds_show_each_models_mean_and_spread():
    results = page_tables.gather_evaluations({"one stage, seed 0": evaluation(6.0, 0.95),
                                              "cascade, seed 0": evaluation(4.0, 0.97),
                                              "one stage, seed 1": evaluation(8.0, 0.97),
                                              "cascade, seed 1": evaluation(5.0, 0.99),
                                              "cascade, at level 0.4": evaluation(7.5, None)})
    lines = report.render("evaluations over seeds", results).splitlines()
    assert lines[0] == "| | seeds | FID | accuracy | sampling |"
    assert lines[2] == "| one stage | 2 | 7.00 +- 1.41 | 96.0% +- 1.4 | ddim x50, CFG 1.5 |"  # rows in order first seen
    assert lines[3] == "| cascade | 2 | 4.50 +- 0.71 | 98.0% +- 1.4 | ddim x50, CFG 1.5 |"
    assert lines[4] == "| cascade, at level 0.4 | 1 | 7.50 | n/a | ddim x50, CFG 1.5 |"  # one seed: no spread
    assert lines[-1] == "Mean +- sample standard deviation over training seeds; N = 500, floor 5.45."


def test_clips_put_each_video_model_in_a_column_beside_the_real_clips():
    def scored(accuracy, first_frame_error=None):
        real = {"frame_accuracy": 0.99, "identity_consistent": 0.97, "identity_correct": 0.96,
                "direction_accuracy": 1.0, "speed_accuracy": 1.0}
        video = {**{k: v - 0.1 for k, v in real.items()}, "frame_accuracy": accuracy, "real": real, "frames": 8,
                 "first_frame_given": first_frame_error is not None}
        if first_frame_error is not None:
            video["first_frame_error"] = first_frame_error
        return {**evaluation(12.0, accuracy, n=400), "seconds": 100.0, "video": video}

    results = page_tables.gather_evaluations({"text to video": scored(0.93), "image to video": scored(0.95, 0.021)})
    lines = report.render("clips", results).splitlines()
    assert lines[0] == "| | text to video | image to video | real held-out clips |"
    assert lines[2] == "| frame FID (floor 5.45) | 12.00 | 12.00 | - |"
    assert "| digit accuracy, frame by frame | 93.0% | 95.0% | 99.0% |" in lines
    assert "| moving the direction asked | 90.0% | 90.0% | 100.0% |" in lines
    assert "| first frame given, its mean pixel error | - | 2.1% | - |" in lines  # only where one was given
    assert "| seconds to draw a clip | 0.25 | 0.25 | - |" in lines
    with pytest.raises(ValueError, match="no video scores in: plain"):
        report.render("clips", page_tables.gather_evaluations({"plain": evaluation(5.0, 0.97)}))


def test_a_table_judged_on_two_machines_names_both_floors_and_says_so():
    # each machine trains its own judge; its floor is the judge's fingerprint in every evaluate.py output
    other_judge = {**evaluation(5.0, 0.97), "fid_floor": 2.38}
    one_judge = page_tables.gather_evaluations({"a, seed 0": evaluation(6.0, 0.95), "a, seed 1": evaluation(8.0, 0.97)})
    two_judges = page_tables.gather_evaluations({"a, seed 0": evaluation(6.0, 0.95), "a, seed 1": other_judge})
    assert report.render("evaluations over seeds", one_judge).splitlines()[-1].endswith("floor 5.45.")
    last = report.render("evaluations over seeds", two_judges).splitlines()[-1]
    assert last.endswith("floor 2.38 and 5.45: rows judged on different machines, compare FIDs within one judge.")
    assert page_tables.floor_text([other_judge, other_judge]) == "2.38"
