"""aurora bench choice: --choice loglik vs generated letters on the MVBench fixture (grey videos written for it),
each choice's picks checked against the inference engine's option scores (an independent path), and its errors."""
import json
from pathlib import Path

from _models import tiny_checkpoint

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "benchmarks"


def test_bench_choice_on_the_mvbench_fixture(tmp_path, capsys):
    from aurora.cli import main
    from aurora.evaluation.run import LETTERS, PromptBuilder
    from aurora.data.benchmarks import read_benchmark
    from aurora.infer.engine import engine_from_checkpoint

    tiny_checkpoint(tmp_path / "m.ckpt", max_new_tokens=3, inference={"num_frames": 2})  # as aurora fit writes
    videos = tmp_path / "videos"
    rc = main(["bench", "choice", "--ckpt", str(tmp_path / "m.ckpt"), "--benchmark", "mvbench", "--annotations",
               str(FIX / "mvbench/json"), "--videos", str(videos), "--grey-videos", "--frames", "2", "--limit", "3",
               "--json", str(tmp_path / "c.json")])
    assert rc == 0
    out = capsys.readouterr()
    assert "grey videos written" in out.err and "| loglik-text | 3 |" in out.out
    doc = json.loads((tmp_path / "c.json").read_text())
    table = doc["table"]
    assert set(table) == {"generate", "loglik", "loglik-text"} and doc["grey_videos_written"] >= 3
    for c, row in table.items():
        assert row["questions"] == 3 and row["errors"] == 0 and row["seconds_per_question"] > 0
        assert sum(row["answers_read_as"].values()) == 3
        assert (set(row["answers_read_as"]) == {"loglik"}) == c.startswith("loglik")
        assert abs(row["accuracy"] * 3 - round(row["accuracy"] * 3)) < 1e-6  # a count of 3 questions

    # the picks, recomputed by the inference engine (read the video and the prompt, score each option's answer)
    bench = read_benchmark("mvbench", FIX / "mvbench/json", videos)
    engine, _ = engine_from_checkpoint(tmp_path / "m.ckpt", None)
    from aurora.evaluation.run import evaluate, AuroraPredictor
    from aurora.tools.bench_choice import _TextChooser

    pred = AuroraPredictor(tmp_path / "m.ckpt", frames=2, max_new_tokens=3)
    for chooser, letters in ((pred, True), (_TextChooser(pred), False)):
        rep = evaluate(bench, chooser, limit=3, choice="loglik")
        for s, rec in zip(bench.samples[:3], rep.records):
            prompt = PromptBuilder()(s)
            seg = s.segment
            vs = engine.read_video(s.video, prompt, 2, start=seg.start if seg else None, end=seg.end if seg else None)
            opts = [LETTERS[i] for i in range(len(s.options))] if letters else list(s.options)
            scores = engine.option_scores(vs, prompt, opts)
            assert rec["prediction"] == LETTERS[max(range(len(scores)), key=scores.__getitem__)]

    assert main(["bench", "choice", "--ckpt", str(tmp_path / "m.ckpt"), "--benchmark", "activitynet_qa",
                 "--annotations", str(FIX / "activitynet_qa"), "--videos", str(videos)]) == 2
    assert "not multiple choice" in capsys.readouterr().err
