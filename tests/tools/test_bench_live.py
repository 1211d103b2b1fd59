"""`aurora bench live`: the stream it writes, and the summary's arithmetic (the hour-long run is in docs/benchmarks.md)."""
import pytest

from aurora.data.stream import LiveFrames
from aurora.tools.bench_live import format_table, summary, write_stream


def test_the_written_stream_is_read_live_by_time(tmp_path):
    path = tmp_path / "s.ts"
    assert write_stream(path, minutes=0.2, fps=2, size=32) == 24
    times = [t for t, _ in LiveFrames(path, fps=1, follow=False)]
    assert times == [float(i) for i in range(12)]


def test_summary_growth():
    mib = 2**20
    rec = lambda s, rss, state: {"stream_s": s, "rss_bytes": rss * mib, "hwm_bytes": (rss + 1) * mib,  # noqa: E731
                                 "state_bytes": state * mib, "answer_s": 0.1}
    res = [{"backbone": "rwkv6", "records": [rec(0, 100, 0.5), rec(3600, 100.5, 0.5)]},
           {"backbone": "transformer", "records": [rec(0, 100, 0.1), rec(3600, 140, 30)]},
           {"backbone": "gla", "status": "error", "records": []}]
    s = summary(res)
    assert set(s) == {"rwkv6", "transformer"}
    assert s["rwkv6"]["rss_growth_mib"] == pytest.approx(0.5) and s["rwkv6"]["to_min"] == 60
    assert s["transformer"]["state_last_mib"] == pytest.approx(30)
    assert "+40.00" in format_table(s)
