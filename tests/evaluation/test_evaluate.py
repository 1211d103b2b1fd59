"""Benchmark evaluation: the readers on fixture files in each benchmark's published format, answer extraction,
scoring against hand-computed values with a lookup-table predictor, the lmms-eval log, and `aurora eval` end to end
from a checkpoint written by a 2-step `aurora fit`."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from aurora.data.benchmarks import (BENCHMARKS, MULTIPLE_CHOICE, OPEN_ENDED, BenchmarkFormatError, Segment,
                                    read_benchmark, strip_option_letters)
from aurora.data.video import VideoDecodeError, encode_mp4
from aurora.evaluation.options import extract_choice
from aurora.evaluation.run import (PromptBuilder, eval_main, evaluate, open_ended_scores, sample_frames,
                             write_results)

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures" / "benchmarks"
FPS = 4


def _video(path: Path, frames: int = 8, step: int = 30, size: int = 32) -> None:
    """A tiny mp4 whose frame i is a flat grey of value step * i (so a test can tell which frames were read)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.stack([np.full((size, size, 3), step * i, np.uint8) for i in range(frames)])
    path.write_bytes(encode_mp4(arr, fps=FPS))


def _frame_folder(path: Path, frames: int = 6, step: int = 40) -> None:
    from PIL import Image

    path.mkdir(parents=True, exist_ok=True)
    for i in range(frames):
        Image.fromarray(np.full((24, 24, 3), step * i, np.uint8)).save(path / f"{i + 1:05d}.jpg", quality=95)


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """One video folder per benchmark, laid out as each benchmark publishes its videos; a few left out."""
    root = tmp_path_factory.mktemp("videos")
    mv = root / "mvbench"
    _video(mv / "star/Charades_v1_480/ZS9XR.mp4")
    _video(mv / "star/Charades_v1_480/YSKX3.mp4")
    _video(mv / "Moments_in_Time_Raw/videos/-YwZOeyAQC8_15.mp4")  # zzPqLm3Tx0A_2.mp4 is missing
    _frame_folder(mv / "tvqa/frames_fps3_hq/s01e02_seg02_clip_00")
    _video(root / "videomme/vmA.mp4")
    _video(root / "videomme/vmB.mp4")  # vmC is missing
    for uid in ("0074f737-11cb-497d-8d07-77c3a8127391", "00b9a0de-c59e-49cb-a127-6081e2fb8c8e",
                "00f93e1e-cf4e-4835-88b4-4ad68216e86f", "01a7a9a9-2b1c-4f3e-9a57-3b2a6c0b8d11"):
        _video(root / f"egoschema/{uid}.mp4")
    _video(root / "activitynet_qa/v_JDg--pjY5gg.mp4")
    _video(root / "activitynet_qa/7Xyk8fq1gK0.mp4")  # v_missingVid01 is missing
    _video(root / "msvd_qa/-4wsuPCjDBc_5_15.mp4")  # the clip of vid1202 is missing
    return root


class LookupPredictor:
    """A test double: a fixed response per (video file name, question); records the segments it was given."""

    def __init__(self, table):
        self.table, self.segments, self.prompts = table, {}, []

    def __call__(self, video_path, prompt_text, segment=None):
        name = Path(video_path).name
        self.segments[name] = segment
        self.prompts.append(prompt_text)
        question = next(q for (v, q) in self.table if v == name and q in prompt_text)
        return self.table[(name, question)]


# ------------------------------------------------------------------------------------------------ readers


def test_registry_lists_the_benchmarks():
    assert BENCHMARKS.names() == ["activitynet_qa", "egoschema", "msvd_qa", "mvbench", "videomme"]
    with pytest.raises(KeyError, match="unknown benchmark 'nope'; known benchmarks: activitynet_qa"):
        read_benchmark("nope", FIX, FIX)


def test_mvbench_reads_task_files_segments_and_frame_folders(videos):
    b = read_benchmark("mvbench", FIX / "mvbench/json", videos / "mvbench")
    assert b.kind == MULTIPLE_CHOICE and b.records == 5 and len(b.samples) == 4
    assert b.missing_videos == [{"id": "fine_grained_action/1",
                                 "video": str(videos / "mvbench/Moments_in_Time_Raw/videos/zzPqLm3Tx0A_2.mp4")}]
    s = {x.id: x for x in b.samples}
    a = s["action_sequence/1"]
    assert a.task == "action_sequence" and a.answer == "C" and a.options[2] == "Threw the bag."
    assert a.segment == Segment(0.25, 0.75, None)
    assert a.video == str(videos / "mvbench/star/Charades_v1_480/YSKX3.mp4")
    assert s["fine_grained_action/0"].segment is None and s["fine_grained_action/0"].answer == "C"
    ep = s["episodic_reasoning/0"]
    assert Path(ep.video).is_dir() and ep.segment == Segment(0.0, 2.0, 3.0) and len(ep.options) == 5
    assert b.tasks == ["action_sequence", "episodic_reasoning", "fine_grained_action"]


def test_videomme_reads_parquet_and_json(videos, tmp_path):
    import pandas as pd

    rows = json.loads((FIX / "videomme/videomme.json").read_text())
    pd.DataFrame(rows).to_parquet(tmp_path / "test-00000-of-00001.parquet")  # the published file is a parquet
    for ann in (tmp_path / "test-00000-of-00001.parquet", tmp_path, FIX / "videomme/videomme.json"):
        b = read_benchmark("videomme", ann, videos / "videomme")
        assert [x.id for x in b.samples] == ["001-1", "001-2", "002-1"], ann
        assert [m["id"] for m in b.missing_videos] == ["003-1"]
        x = b.samples[1]
        assert x.options == ("A cup.", "A book.", "A lamp.", "A phone.") and x.answer == "C"
        assert x.task == "Object Recognition" and dict(x.groups) == {"duration": "short", "domain": "Knowledge"}


def test_egoschema_answers_subset_and_unlabelled(videos):
    b = read_benchmark("egoschema", FIX / "egoschema/questions.json", videos / "egoschema")
    assert b.records == 4 and b.unlabelled == 1 and not b.missing_videos
    assert [(x.id[:8], x.answer) for x in b.samples] == [("0074f737", "D"), ("00b9a0de", "B"), ("00f93e1e", "A")]
    assert b.samples[0].options[3] == "C is cleaning dishes."
    assert read_benchmark("egoschema", FIX / "egoschema", videos / "egoschema").records == 4  # the folder works too


def test_egoschema_without_answers_is_refused(videos, tmp_path):
    shutil.copy(FIX / "egoschema/questions.json", tmp_path / "questions.json")
    with pytest.raises(FileNotFoundError, match="subset_answers.json"):
        read_benchmark("egoschema", tmp_path / "questions.json", videos / "egoschema")


def test_activitynet_qa_joins_questions_and_answers(videos):
    b = read_benchmark("activitynet_qa", FIX / "activitynet_qa/test_q.json", videos / "activitynet_qa")
    assert b.kind == OPEN_ENDED and b.records == 4
    assert [(x.id, x.answer, x.task, x.options) for x in b.samples] == [
        ("v_JDg--pjY5gg_1", "yes", "yes_no", None), ("v_JDg--pjY5gg_2", "red", "color", None),
        ("7Xyk8fq1gK0_3", "2", "number", None)]
    assert b.samples[2].video.endswith("7Xyk8fq1gK0.mp4")  # found without the v_ prefix
    assert b.missing_videos[0]["id"] == "v_missingVid01_0"


def test_msvd_qa_maps_video_ids_to_clips(videos):
    b = read_benchmark("msvd_qa", FIX / "msvd_qa/test_qa.json", videos / "msvd_qa")
    assert [(x.id, x.task, x.answer) for x in b.samples] == [("30933", "who", "man"), ("30934", "what", "tomato")]
    assert b.samples[0].video.endswith("-4wsuPCjDBc_5_15.mp4")
    assert b.missing_videos == [{"id": "30935", "video": str(videos / "msvd_qa/-7KMZQEsJW4_205_208")}]


@pytest.mark.parametrize("bench, src, file, index, field", [
    ("mvbench", "mvbench/json/action_sequence.json", "action_sequence.json", 1, "candidates"),
    ("videomme", "videomme/videomme.json", "videomme.json", 2, "answer"),
    ("egoschema", "egoschema/questions.json", "questions.json", 0, "option 3"),
    ("activitynet_qa", "activitynet_qa/test_a.json", "test_a.json", 1, "type"),
    ("msvd_qa", "msvd_qa/test_qa.json", "test_qa.json", 2, "question"),
])
def test_a_missing_field_names_file_record_and_field(bench, src, file, index, field, tmp_path, videos):
    folder = tmp_path / Path(src).parent
    shutil.copytree(FIX / Path(src).parent, folder)
    data = json.loads((folder / file).read_text())
    del data[index][field]
    (folder / file).write_text(json.dumps(data))
    ann = folder / ("test_q.json" if bench == "activitynet_qa" else file)
    with pytest.raises(BenchmarkFormatError) as e:
        read_benchmark(bench, ann, videos / bench)
    msg = str(e.value)
    assert str(folder / file) in msg and f"record {index}" in msg and repr(field) in msg


def test_bad_answers_and_bad_json_are_named(tmp_path, videos):
    data = json.loads((FIX / "mvbench/json/action_sequence.json").read_text())
    data[0]["answer"] = "Flew away."
    (tmp_path / "action_sequence.json").write_text(json.dumps(data))
    with pytest.raises(BenchmarkFormatError, match=r"record 0 .*'Flew away\.' is not one of its candidates"):
        read_benchmark("mvbench", tmp_path / "action_sequence.json", videos / "mvbench")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(BenchmarkFormatError, match="broken.json is not valid JSON"):
        read_benchmark("mvbench", tmp_path / "broken.json", videos / "mvbench")
    with pytest.raises(FileNotFoundError, match="video folder not found"):
        read_benchmark("mvbench", FIX / "mvbench/json", tmp_path / "nowhere")


def test_strip_option_letters():
    assert strip_option_letters(["A. One.", "B. Two."]) == ["One.", "Two."]
    assert strip_option_letters(["(A) x", "(B) y"]) == ["x", "y"]
    assert strip_option_letters(["B. One.", "A. Two."]) == ["B. One.", "A. Two."]  # letters out of order: kept


# ------------------------------------------------------------------------------------------------ frames


def test_sample_frames_uniform_segment_and_frame_folder(videos):
    mean = lambda t: [round(float(f.float().mean())) for f in t]  # noqa: E731
    whole = sample_frames(videos / "mvbench/star/Charades_v1_480/ZS9XR.mp4", 4)
    assert whole.shape == (4, 32, 32, 3) and whole.dtype == torch.uint8
    assert all(abs(a - b) <= 4 for a, b in zip(mean(whole), [30, 90, 150, 210]))  # frames 1, 3, 5, 7 of 8
    seg = sample_frames(videos / "mvbench/star/Charades_v1_480/ZS9XR.mp4", 2, Segment(0.25, 0.75))
    assert all(abs(a - b) <= 4 for a, b in zip(mean(seg), [30, 60]))  # 0.25..0.75 s at 4 fps: frames 1..2
    folder = sample_frames(videos / "mvbench/tvqa/frames_fps3_hq/s01e02_seg02_clip_00", 2, Segment(0, 2, 3.0))
    assert all(abs(a - b) <= 4 for a, b in zip(mean(folder), [40, 160]))  # 6 frames at 3 fps: frames 1 and 4


def test_sample_frames_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="video not found"):
        sample_frames(tmp_path / "none.mp4", 2)
    (tmp_path / "bad.mp4").write_bytes(b"not a video at all")
    with pytest.raises(VideoDecodeError, match="bad.mp4"):
        sample_frames(tmp_path / "bad.mp4", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(VideoDecodeError, match="holds no images"):
        sample_frames(tmp_path / "empty", 2)


# ------------------------------------------------------------------------------------------------ answers


OPTS = ["cat", "dog", "bird"]


@pytest.mark.parametrize("response, index, how", [
    ("B", 1, "letter"), ("(B)", 1, "letter"), ("B.", 1, "letter"), ("b", 1, "letter"), ("[C]", 2, "letter"),
    ("The answer is B", 1, "letter"), ("The answer is (C).", 2, "letter"), ("answer: b) dog", 1, "letter"),
    ("Answer: A", 0, "letter"), ("Option C", 2, "letter"), ("B. dog", 1, "letter"), ("(c) bird", 2, "letter"),
    ("I think B", 1, "letter"), ("It is B, the dog", 1, "letter"),
    ("dog", 1, "text"), ("The dog is running.", 1, "text"), ("A man is walking a dog", 1, "text"),
    ("The answer is a dog", 1, "text"), ("Bird", 2, "text"),
    ("A or B", None, "ambiguous"), ("cat and dog", None, "ambiguous"), ("(B) cat", None, "ambiguous"),
    ("C because the dog barks", None, "ambiguous"), ("The answer is A or C", None, "ambiguous"),
    ("", None, "none"), ("I don't know", None, "none"), ("E", None, "none"), ("a horse", None, "none"),
])
def test_extract_choice(response, index, how):
    c = extract_choice(response, OPTS)
    assert (c.index, c.how) == (index, how)


def test_extract_choice_prefers_the_longer_option_text():
    assert extract_choice("a hot dog", ["dog", "hot dog"]).index == 1
    assert extract_choice("the dog", ["dog", "hot dog"]).index == 0


def test_open_ended_scores():
    assert open_ended_scores("Yes.", "yes") == (1.0, 1.0)
    em, f1 = open_ended_scores("a red car", "red")
    assert em == 0.0 and f1 == pytest.approx(2 / 3)
    assert open_ended_scores("two", "2") == (0.0, 0.0)


def test_prompts():
    from aurora.data.benchmarks import Sample

    mc = PromptBuilder()(Sample("1", "v.mp4", "What is it?", ("cat", "dog"), "B", "t"))
    assert mc == ("What is it?\nOptions:\n(A) cat\n(B) dog\n"
                  "Answer with the option's letter from the given choices directly.")
    oe = PromptBuilder()(Sample("2", "v.mp4", "what color is the car", None, "red", "color"))
    assert oe == "what color is the car\nAnswer the question using a single word or phrase."


# ------------------------------------------------------------------------------------------------ scoring

MVBENCH_TABLE = {
    ("ZS9XR.mp4", "after the person took the food"): "(A) Ate the medicine.",  # right (A)
    ("YSKX3.mp4", "before the person opened the door"): "The answer is C",  # right (C)
    ("-YwZOeyAQC8_15.mp4", "action performed"): "juggling or kicking",  # ambiguous: wrong (C)
    ("s01e02_seg02_clip_00", "Why did Sheldon"): "He was locked out.",  # names A: wrong (B)
}


def test_mvbench_scores_per_task_and_overall(videos):
    b = read_benchmark("mvbench", FIX / "mvbench/json", videos / "mvbench")
    pred = LookupPredictor(MVBENCH_TABLE)
    r = evaluate(b, pred)
    assert r.metrics["samples"] == 4
    assert r.metrics["accuracy"] == pytest.approx(0.5)  # 2 of 4
    assert r.metrics["accuracy_task_mean"] == pytest.approx(1 / 3)  # (1 + 0 + 0) / 3
    assert {t: v["accuracy"] for t, v in r.per_task.items()} == {
        "action_sequence": 1.0, "episodic_reasoning": 0.0, "fine_grained_action": 0.0}
    assert r.extraction == {"letter": 2, "ambiguous": 1, "text": 1}
    assert pred.segments["YSKX3.mp4"] == Segment(0.25, 0.75) and pred.segments["-YwZOeyAQC8_15.mp4"] is None
    assert "(C) Put down the cup/glass/bottle." in pred.prompts[0]

    # without a terminal: a progress line every N questions and after the last, with the running accuracy
    lines = []
    evaluate(b, pred, log_every=3, log=lines.append)
    assert [line.split(" questions")[0] for line in lines] == ["mvbench: 3/4", "mvbench: 4/4"]
    assert lines[-1].endswith("accuracy so far 0.500")
    assert evaluate(b, pred, log_every=3, progress=True, log=lines.append) and len(lines) == 2  # a bar instead

    # a predictor that takes no segment still runs: the bounded questions are counted
    plain = evaluate(b, lambda video_path, prompt_text: "A", limit=3)
    assert plain.metrics["samples"] == 3 and plain.segments_ignored == 3
    assert plain.metrics["accuracy"] == pytest.approx(1 / 3)  # A is right only for action_sequence/0


def test_videomme_scores_per_task_and_duration(videos):
    b = read_benchmark("videomme", FIX / "videomme/videomme.json", videos / "videomme")
    table = {("vmA.mp4", "How many people"): "B", ("vmA.mp4", "on the table"): "A. A cup.",
             ("vmB.mp4", "How many goals"): "The answer is D."}
    r = evaluate(b, LookupPredictor(table))
    assert r.metrics["accuracy"] == pytest.approx(2 / 3)
    assert r.per_task["Counting Problem"] == {"accuracy": 1.0, "samples": 2}
    assert r.per_task["Object Recognition"]["accuracy"] == 0.0
    assert r.per_group["duration"] == {"long": {"accuracy": 1.0, "samples": 1},
                                       "short": {"accuracy": 0.5, "samples": 2}}


def test_open_ended_scores_per_type(videos):
    b = read_benchmark("activitynet_qa", FIX / "activitynet_qa", videos / "activitynet_qa")
    table = {("v_JDg--pjY5gg.mp4", "outdoors"): "Yes.", ("v_JDg--pjY5gg.mp4", "what color"): "a red car",
             ("7Xyk8fq1gK0.mp4", "how many"): "two"}
    r = evaluate(b, LookupPredictor(table))
    assert r.metrics["exact_match"] == pytest.approx(1 / 3)
    assert r.metrics["f1"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    assert r.per_task["color"] == {"exact_match": 0.0, "f1": pytest.approx(2 / 3), "samples": 1}
    assert r.per_task["yes_no"]["exact_match"] == 1.0
    assert r.extraction == {}


def test_undecodable_videos_are_counted_not_scored(videos, tmp_path):
    b = read_benchmark("mvbench", FIX / "mvbench/json", videos / "mvbench")

    def predict(video_path, prompt_text):
        if video_path.endswith("YSKX3.mp4"):
            raise VideoDecodeError(f"{video_path}: cannot decode video")
        return "A"

    r = evaluate(b, predict)
    assert r.metrics["samples"] == 3 and len(r.errors) == 1 and r.errors[0]["id"] == "action_sequence/1"


def test_results_json_and_lmms_eval_log(videos, tmp_path):
    b = read_benchmark("mvbench", FIX / "mvbench/json", videos / "mvbench")
    r = evaluate(b, LookupPredictor(MVBENCH_TABLE))
    summary = write_results(r, tmp_path, {"frames": 4}, model_name="aurora_test", model_args="pretrained=x",
                            gen_kwargs={"max_new_tokens": 8})
    ours = json.loads((tmp_path / "results.json").read_text())
    assert ours == json.loads(json.dumps(summary))
    assert ours["counts"] == {"annotations": 5, "with_video": 4, "limit": None, "evaluated": 4, "missing_videos": 1, "refused_videos": 0,
                              "unlabelled": 0, "decode_errors": 0, "segments_ignored": 0}
    assert ours["metrics"]["accuracy"] == 0.5 and ours["missing_videos"][0]["id"] == "fine_grained_action/1"
    assert not list(tmp_path.rglob("*.tmp"))

    log_path = Path(ours["lmms_eval"]["results"])
    assert log_path.parent == tmp_path / "lmms_eval" / "aurora_test" and log_path.name.endswith("_results.json")
    log = json.loads(log_path.read_text())
    for key in ("results", "groups", "group_subtasks", "configs", "versions", "n-shot", "higher_is_better",
                "n-samples", "config", "git_hash", "date", "task_hashes", "model_name"):
        assert key in log, key
    tasks = ["mvbench_action_sequence", "mvbench_episodic_reasoning", "mvbench_fine_grained_action"]
    assert log["group_subtasks"] == {"mvbench": tasks}
    assert log["results"]["mvbench"]["accuracy,none"] == 0.5
    assert log["results"]["mvbench"]["accuracy_stderr,none"] == pytest.approx((1 / 3 / 4) ** 0.5)
    assert log["results"]["mvbench_action_sequence"] == {"alias": " - mvbench_action_sequence",
                                                         "accuracy,none": 1.0, "accuracy_stderr,none": 0.0}
    assert log["results"]["mvbench_episodic_reasoning"]["accuracy_stderr,none"] == "N/A"  # one sample
    assert log["n-samples"]["mvbench_action_sequence"] == {"original": 2, "effective": 2}
    assert log["higher_is_better"]["mvbench_action_sequence"] == {"accuracy": True}
    assert log["configs"]["mvbench_action_sequence"]["output_type"] == "generate_until"
    assert log["config"]["model"] == "aurora_test" and log["config"]["gen_kwargs"] == {"max_new_tokens": 8}

    path = Path(ours["lmms_eval"]["samples"]["mvbench_action_sequence"])
    assert path.name == log_path.name.replace("_results.json", "_samples_mvbench_action_sequence.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(x["doc_id"], x["target"], x["filtered_resps"], x["accuracy"]) for x in rows] == [
        (0, "A", ["A"], 1.0), (1, "C", ["C"], 1.0)]
    assert rows[1]["resps"] == [["The answer is C"]] and len(rows[0]["doc_hash"]) == 64
    assert "Options:" in rows[0]["input"]


def test_cli_errors_are_clear(videos, tmp_path, capsys):
    rc = eval_main(["--benchmark", "mvbench", "--annotations", str(FIX / "mvbench/json"), "--videos",
                    str(videos / "mvbench"), "--ckpt", str(tmp_path / "none.ckpt"), "--out", str(tmp_path)])
    assert rc == 2 and "checkpoint not found" in capsys.readouterr().err
    rc = eval_main(["--benchmark", "mvbench", "--annotations", str(tmp_path / "nope"), "--videos",
                    str(videos / "mvbench"), "--ckpt", "x", "--out", str(tmp_path)])
    assert rc == 2 and "mvbench annotations not found" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        eval_main(["--benchmark", "nope", "--annotations", "a", "--videos", "v", "--ckpt", "c", "--out", "o"])


# ------------------------------------------------------------------------------------------------ the model


def _demo_checkpoint(path: Path, drop: str | None = None):
    """A checkpoint shaped like the ones `aurora fit` writes (hyperparameters + ``model.*`` weights) for the demo
    recipe's model, with random weights."""
    import yaml

    from aurora.model import AuroraModel

    hp = yaml.safe_load((ROOT / "recipes/demo.yaml").read_text())["model"]
    torch.manual_seed(0)
    model = AuroraModel.from_specs(vision=hp["vision"], merge=hp["merge"], projector=hp["projector"], rnn=hp["rnn"])
    sd = {f"model.{k}": v for k, v in model.state_dict().items() if not (drop and k.startswith(drop))}
    torch.save({"state_dict": sd, "hyper_parameters": hp}, path)
    return model


def test_predictor_from_a_checkpoint(videos, tmp_path):
    from aurora.checkpoint import CheckpointError
    from aurora.evaluation.run import AuroraPredictor

    model = _demo_checkpoint(tmp_path / "m.ckpt")
    pred = AuroraPredictor(tmp_path / "m.ckpt", frames=2, max_new_tokens=3)
    assert pred.num_frames == 2 and pred.image_size == 64 and pred.recipe is None and pred.max_new_tokens == 3
    for k, v in model.state_dict().items():
        assert torch.equal(pred.model.state_dict()[k], v), k
    out = pred(str(videos / "mvbench/star/Charades_v1_480/ZS9XR.mp4"), "What happened?", Segment(0.0, 1.0))
    assert isinstance(out, str)
    _demo_checkpoint(tmp_path / "bad.ckpt", drop="projector.")
    with pytest.raises(CheckpointError, match="missing model.projector"):
        AuroraPredictor(tmp_path / "bad.ckpt")


@pytest.mark.slow
def test_aurora_eval_end_to_end_from_a_two_step_fit(videos, tmp_path, monkeypatch, capsys):
    """`aurora fit` (2 steps) then `aurora eval` on the MVBench fixture, both through the `aurora` command's entry
    point (in this process: the imports are paid once)."""
    from aurora.cli import main

    monkeypatch.chdir(tmp_path)  # the demo recipe writes under runs/
    rc = main(["fit", "--config", str(ROOT / "recipes/demo.yaml"), "--model.init_from=null", "--trainer.max_steps=2",
               "--trainer.limit_val_batches=0", "--trainer.logger=false", "--trainer.max_time=null",
               "--trainer.enable_progress_bar=false", "--data.batch_size=2", "--data.num_workers=0",
               "--data.synthetic.train=4", "--data.synthetic.val=2", "--data.synthetic.test=2"])
    ckpt = tmp_path / "runs/demo/checkpoints/last.ckpt"
    assert rc == 0 and ckpt.is_file()
    capsys.readouterr()
    rc = main(["eval", "--benchmark", "mvbench", "--annotations", str(FIX / "mvbench/json"), "--videos",
               str(videos / "mvbench"), "--ckpt", str(ckpt), "--frames", "2", "--limit", "3",
               "--max-new-tokens", "4", "--out", str(tmp_path / "eval"), "--log-every", "2"])
    out = capsys.readouterr()
    assert rc == 0, out.err[-3000:]
    assert "1 videos missing" in out.err and "mvbench: 3 questions scored" in out.out
    # stderr is not a terminal here: progress lines instead of a bar (every 2 questions, and after the last)
    assert "mvbench: 2/3 questions" in out.err and "mvbench: 3/3 questions" in out.err
    assert "accuracy so far" in out.err
    res = json.loads((tmp_path / "eval/results.json").read_text())
    assert res["counts"]["evaluated"] == 3 and res["counts"]["missing_videos"] == 1
    assert res["settings"]["frames"] == 2 and res["settings"]["settings_from"] == "the checkpoint last.ckpt"
    assert 0.0 <= res["metrics"]["accuracy"] <= 1.0 and sum(res["extraction"].values()) == 3
    log = json.loads(Path(res["lmms_eval"]["results"]).read_text())
    assert set(log["group_subtasks"]["mvbench"]) == {"mvbench_action_sequence", "mvbench_episodic_reasoning",
                                                     "mvbench_fine_grained_action"}
    assert log["results"]["mvbench"]["accuracy,none"] == res["metrics"]["accuracy"]


def test_loglik_choice_scores_each_option_from_one_state(videos, tmp_path):
    """--choice loglik: each option letter's log-likelihood from one state after the question equals the
    teacher-forced log-probabilities of reading prompt + option in one pass; evaluate() picks the most likely."""
    from aurora.evaluation.run import AuroraPredictor

    _demo_checkpoint(tmp_path / "m.ckpt")
    pred = AuroraPredictor(tmp_path / "m.ckpt", frames=2, max_new_tokens=3)
    video = str(videos / "mvbench/star/Charades_v1_480/ZS9XR.mp4")
    options = ["a dog", "a cat", "a bird"]
    frames = sample_frames(video, 2)
    from aurora.data.video import to_pixels

    pixels = to_pixels(frames, pred.image_size)[None]
    prompt = pred.template.build_prompt(pred.tokenizer, "Which animal?")
    conts = [pred.tokenizer.encode(pred.template.answer.format(answer=x)) for x in "ABC"]
    scores = pred.model.score_continuations(pixels, torch.tensor([prompt]), conts)
    for cont, got in zip(conts, scores):  # reference: one pass over prompt + continuation, no state reuse
        model = pred.model
        torch.set_grad_enabled(False)
        video_emb, _ = model.encode_video(pixels)
        embeds, _ = model.splice(torch.tensor([prompt + cont]), video_emb)
        hidden, _ = model.rnn(embeds)
        logp = torch.log_softmax(model.rnn.logits(hidden[0]).float(), -1)
        start = embeds.shape[1] - len(cont) - 1
        want = sum(float(logp[start + j, t]) for j, t in enumerate(cont))
        torch.set_grad_enabled(True)
        assert got == pytest.approx(want, abs=1e-4)
    assert pred.choose(video, "Which animal?", options) == int(np.argmax(scores))
    with pytest.raises(ValueError, match="empty continuation"):
        pred.model.score_continuations(pixels, torch.tensor([prompt]), [[]])

    bench = read_benchmark("mvbench", FIX / "mvbench/json", videos / "mvbench")
    report = evaluate(bench, pred, choice="loglik", limit=3)
    assert report.extraction and set(report.extraction) == {"loglik"}
    assert all(r["prediction"] in "ABCDEFGH" for r in report.records)
    with pytest.raises(ValueError, match="unknown choice"):
        evaluate(bench, pred, choice="vote")
    with pytest.raises(TypeError, match="choose"):
        evaluate(bench, LookupPredictor({}), choice="loglik")
