"""aurora bench decode on a tiny grid: every point runs in its own process and writes JSON + PNG; absent peers
are skipped with their reason."""
import json

from aurora.tools.bench_decode import bench_decode_main


def test_bench_decode_tiny_grid(tmp_path, capsys):
    out = tmp_path / "d.json"
    rc = bench_decode_main(["--heights", "72", "--minutes", "0.02", "--samplings", "4,1fps",
               "--backends", "aurora,full,nope", "--cache", str(tmp_path / "cache"), "--json", str(out),
               "--plot", str(tmp_path / "d.png")])
    assert rc in (0, None)
    records = json.loads(out.read_text())["records"]
    assert len(records) == 6
    done = {(r["sampling"], r["backend"]): r for r in records if "seconds" in r}
    assert done[("4", "aurora")]["frames"] == 4 and done[("4", "full")]["frames"] == 4
    assert done[("1fps", "aurora")]["frames"] == 1  # 36 frames at 30 fps: 1.2 s
    assert done[("4", "aurora")]["shape"] == [72, 128, 3] and done[("4", "aurora")]["peak_rss"] > 0
    assert done[("4", "aurora")]["index_source"] == "header" and 4 <= done[("4", "aurora")]["decoded"] <= 36
    assert all("unknown backend" in r["skipped"] for r in records if r["backend"] == "nope")
    assert (tmp_path / "d.png").stat().st_size > 0


def test_bench_decode_update_replaces_the_points_measured_again(tmp_path):
    from aurora.tools.bench_decode import _minutes, merge_records

    assert _minutes("30s,1,0.5") == [0.5, 1.0, 0.5]
    rec = lambda sampling, backend, s: {"height": 72, "minutes": 1.0, "sampling": sampling, "backend": backend,
                                        "seconds": s}
    old = {"settings": {"run": 1}, "records": [rec("8", "aurora", 9.0), rec("8", "full", 5.0)]}
    merged, runs = merge_records(old, [rec("8", "aurora", 1.0), rec("64", "aurora", 2.0)], {"run": 2})
    assert [(r["sampling"], r["backend"], r["seconds"]) for r in merged] == [
        ("8", "aurora", 1.0), ("8", "full", 5.0), ("64", "aurora", 2.0)]
    assert runs == [{"run": 1}, {"run": 2}]
