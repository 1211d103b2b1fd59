"""aurora bench serve (aurora/tools/bench_serve.py): the load loop against a live server (every request answered,
follow-ups from the cache), the summary's figures, the RSS sampler, and refusals of bad arguments."""
from __future__ import annotations

import os

import pytest

from aurora.tools.bench_serve import RssSampler, percentile, run_load, summarize, synthetic_videos


def test_percentile_interpolates_like_numpy():
    np = pytest.importorskip("numpy")
    xs = [5.0, 1.0, 9.0, 3.0, 7.5]
    for q in (0, 50, 90, 99, 100):
        assert percentile(xs, q) == pytest.approx(float(np.percentile(xs, q)))
    assert percentile([], 50) is None


def test_load_against_a_live_server(live):
    import json
    import urllib.request

    base, _ = live
    stats = lambda: json.loads(urllib.request.urlopen(base + "/v1/stats", timeout=10).read())  # noqa: E731
    before = stats()
    videos = synthetic_videos(2, frames=4, size=32, seed=7)
    sampler = RssSampler(os.getpid(), every=0.02)
    sampler.start()
    records = run_load(base, "tiny", videos, questions=3, clients=3, max_tokens=4, timeout=60)
    rss = sampler.stop()
    after = stats()
    assert len(records) == 6 and all(r["status"] == 200 for r in records), records
    # each video read once; its follow-ups (the video in the first user message) come from the cache
    assert after["reads"] - before["reads"] == 2
    assert after["cache"]["hits"] - before["cache"]["hits"] == 4
    s = summarize(records, 1.0, rss, None)
    assert s["failed"] == 0 and s["requests_per_s"] == 6.0 and s["cache_header"] == {"hit": 4, "miss": 2}
    assert 0 < s["latency_ms"]["p50"] <= s["latency_ms"]["p99"] <= s["latency_ms"]["max"]
    assert s["server_rss_mib"]["samples"] >= 1 and s["server_rss_mib"]["max"] > 10
    streamed = run_load(base, "tiny", videos[:1], questions=1, clients=1, max_tokens=4, stream=True, timeout=60)
    assert streamed[0]["status"] == 200 and streamed[0]["cache"] == "hit"


def test_failed_requests_are_counted(live):
    records = run_load(live[0], "no-such-model", synthetic_videos(1, frames=4, size=32, seed=1), questions=2,
                       clients=2, max_tokens=4, timeout=60)
    assert [r["status"] for r in records] == [404, 404]
    assert summarize(records, 1.0, [], None)["failed"] == 2


def test_bad_arguments_exit_2(tmp_path, capsys):
    from aurora.cli import main

    with pytest.raises(SystemExit) as e:
        main(["bench", "serve", "--model", str(tmp_path / "nothing")])
    assert e.value.code == 2 and "no such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["bench", "serve", "--model", str(tmp_path), "--clients", "0"])
    assert e.value.code == 2
