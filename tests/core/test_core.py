"""Registries, metrics and the LR schedule: the small pieces of aurora/ core."""
import math

import pytest
import torch

from aurora.evaluation.metrics import AnswerAccuracy
from aurora.evaluation.options import extract_choice, is_correct, normalize_answer
from aurora.registry import Registry
from aurora.train.optim import lr_schedule


def warmup_cosine(total_steps, warmup_ratio, min_ratio):
    return lr_schedule("cosine", total_steps, warmup_ratio, min_ratio)


def test_registry_builds_by_name_and_lists_known_names_on_error():
    reg = Registry("widget")

    @reg.register("a")
    def make_a(x=1, y=2):
        return ("a", x, y)

    reg.register("b")(lambda: "b")
    assert reg.build({"name": "a", "x": 5}, y=7) == ("a", 5, 7)
    assert reg.build("b") == "b"
    with pytest.raises(KeyError, match="unknown widget 'c'; known widgets: a, b"):
        reg.build("c")
    with pytest.raises(KeyError, match="needs a 'name'"):
        reg.build({"x": 1})
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(lambda: None)


def test_every_part_registry_is_filled():
    from aurora.registry import MERGE, ORDER, PROJECTOR, RNN, VISION

    assert "siglip" in VISION and "rwkv6" in RNN and "mlp" in PROJECTOR
    assert {"tome", "none"} <= set(MERGE.names())
    assert {"original", "size_ascending", "size_descending", "random"} <= set(ORDER.names())


def test_answer_matching():
    assert normalize_answer("  Red. ") == "red"
    assert is_correct("red", "Red")
    assert not is_correct("blue", "red")
    opts = ["left", "right", "up", "down"]
    # one rule for aurora test and aurora eval: the option extract_choice reads out of the text
    assert extract_choice("It moves to the right.", opts).index == 1
    assert is_correct("It moves to the right.", "right", opts)
    assert not is_correct("up, then left", "up", opts)  # naming two options is ambiguous: wrong
    assert is_correct("B", "right", opts)  # a letter names its option
    assert is_correct("The answer is left", "left", opts)
    assert not is_correct("The answer is left", "left", None)  # exact-answer questions need the exact answer


def test_answer_accuracy_per_category_and_chance():
    m = AnswerAccuracy(["color", "motion"])
    m.update(["red", "left", "up"], ["red", "right", "up"], ["color", "motion", "motion"],
             [["red", "blue"], ["left", "right", "up", "down"], ["left", "right", "up", "down"]])
    out = m.compute()
    assert out["accuracy"].item() == pytest.approx(2 / 3)
    assert out["accuracy_color"].item() == pytest.approx(1.0)
    assert out["accuracy_motion"].item() == pytest.approx(0.5)
    assert out["chance"].item() == pytest.approx((0.5 + 0.25 + 0.25) / 3)
    with pytest.raises(KeyError, match="known: color, motion"):
        m.update(["x"], ["x"], ["shape"], [None])


def test_warmup_cosine_schedule():
    f = warmup_cosine(total_steps=100, warmup_ratio=0.1, min_ratio=0.1)
    assert f(0) == pytest.approx(0.1)
    assert f(9) == pytest.approx(1.0)
    assert f(10) == pytest.approx(1.0)
    assert f(55) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(100) == pytest.approx(0.1)
    assert all(f(s) >= f(s + 1) for s in range(10, 100))
    g = warmup_cosine(total_steps=None, warmup_ratio=0.1, min_ratio=0.1)
    assert g(0) == 1.0 and g(10_000) == 1.0


def test_a_wrong_part_argument_names_the_part_the_closest_argument_and_all_it_takes():
    from aurora.registry import MERGE, PartArgumentError

    with pytest.raises(PartArgumentError) as e:
        MERGE.build({"name": "tome", "keep_ration": 0.25})
    msg = str(e.value)
    assert "merge strategy 'tome'" in msg and "'keep_ration'" in msg and "did you mean 'keep_ratio'" in msg
    assert "it takes: keep_ratio, r, schedule, order" in msg
    reg = Registry("widget")
    reg.register("any")(lambda **kw: kw)  # a part taking **kwargs is not checked
    assert reg.build({"name": "any", "z": 1}) == {"z": 1}


def test_registry_lists_arguments_defaults_and_plain_summaries():
    from aurora.registry import REQUIRED, plain

    reg = Registry("widget")

    @reg.register("a")
    def make_a(size, ratio=0.5):
        """Makes an ``a`` via :func:`~pkg.mod.build`.

        More words."""

    assert [(a.name, a.default) for a in reg.arguments("a")] == [("size", REQUIRED), ("ratio", 0.5)]
    assert reg.summary("a") == "Makes an a via build."
    assert plain("see :class:`aurora.model.AuroraModel` and ``x``") == "see aurora.model.AuroraModel and x"
