"""The progress bar's texts: a ``max_steps`` run counts optimiser steps (``step 12/800``, never ``Epoch 1/-2``), an
unknown total shows the count alone (never ``4/--``)."""
from types import SimpleNamespace

import pytest

from aurora.train.callbacks import AuroraProgressBar, count_text, epoch_text, step_driven


def test_counts_and_epochs_have_no_negative_or_dashed_totals():
    assert count_text(12, 800, "step") == "step 12/800"
    assert count_text(4, float("inf")) == "4" and count_text(4, None) == "4" and count_text(4, float("nan")) == "4"
    assert count_text(3.0, 10.0) == "3/10"
    assert epoch_text(1, -1) == "Epoch 1" and epoch_text(1, None) == "Epoch 1"
    assert epoch_text(1, 3) == "Epoch 1/2"


@pytest.mark.parametrize("max_steps, max_epochs, driven", [(800, -1, True), (800, None, True), (-1, 3, False),
                                                            (800, 3, False), (-1, -1, False)])
def test_step_driven(max_steps, max_epochs, driven):
    assert step_driven(SimpleNamespace(max_steps=max_steps, max_epochs=max_epochs)) is driven


def test_the_bar_of_a_max_steps_run_counts_steps_over_the_run():
    bar = AuroraProgressBar()
    trainer = SimpleNamespace(max_steps=800, max_epochs=-1, global_step=12, num_training_batches=float("inf"))
    bar._trainer = trainer
    assert bar.total_train_batches == 800
    assert bar._get_train_description(1).strip() == "Epoch 1"
    trainer.max_steps, trainer.max_epochs, trainer.num_training_batches = -1, 2, 50
    assert bar.total_train_batches == 50 and bar._get_train_description(0).strip() == "Epoch 0/1"


def test_the_count_column_renders_steps_and_unknown_totals():
    from rich.progress import Progress

    bar = AuroraProgressBar()
    bar._trainer = SimpleNamespace(max_steps=800, max_epochs=-1)
    (count,) = [c for c in bar.configure_columns(bar.trainer) if type(c).__name__ == "Count"]
    progress = Progress()
    train = progress.add_task("Epoch 0", total=800, completed=12)
    testing = progress.add_task("Testing", total=float("inf"), completed=4)
    bar.train_progress_bar_id = train
    assert count.render(progress.tasks[train]).plain == "step 12/800"
    assert count.render(progress.tasks[testing]).plain == "4"
