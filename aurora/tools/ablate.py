"""``aurora ablate``: a grid of training runs over a base recipe (orders x keep ratios x backbones ...), each cell
trained on the training split and evaluated on the held-out test split, with per-category accuracy.

    aurora ablate --grid recipes/ablations/order_keep.yaml --out runs/ablations/order_keep

A grid file::

    base: recipes/demo.yaml          # the recipe every cell starts from
    overrides:                       # dotted keys applied to every cell (shorter training, ...)
      trainer.max_steps: 200
    axes:                            # the cells: every combination of the axes' values
      - {name: order, key: model.merge.order, values: [original, size_ascending, size_descending]}
      - {name: keep, key: model.merge.keep_ratio, values: [0.25]}
      - {name: backbone, key: model.rnn, labels: [rwkv6], values: [{name: rwkv6, d_model: 128, ...}]}

A value that is a mapping replaces the key's whole value (a backbone's arguments differ); ``labels`` name such
values in the tables. ``base`` is resolved like ``--config`` (a file, else a packaged recipe).
``--override KEY=VALUE`` (repeatable; VALUE read as YAML) is applied to every cell after the grid's ``overrides``:
``aurora ablate --grid G --out O --override trainer.max_steps=50``. It may not set an axis' key.

MLflow: when the cells' recipe logs to MLflow (``trainer.logger`` an MLFlowLogger, as the demo recipe's), the grid
is one parent run (``ablate-<out folder>``, tag ``aurora.stage: ablate``; its id kept in ``<out>/mlflow.json`` so a
resumed grid reuses it) holding results.md / .csv / .png as artifacts, and every cell is its own run
(``<cell>-ablate-cell``) nested under it (``mlflow.parentRunId``), tagged with its axis labels
(``aurora.axis.<name>``), with its training, validation and test metrics.

Each cell writes ``<out>/cells/<cell>/config.yaml`` (the resolved recipe) and, when finished,
``result.json`` (atomically): a cell whose result exists is skipped, so an interrupted grid resumes where it
stopped, but only while its resolved recipe (base, grid overrides, ``--override``'s, its settings) equals the
one its result.json records (``recipe``); a cell whose settings changed is trained again, the log line naming the
keys that differ (a result without a recorded recipe, from before, is trained again too). ``<out>/results.csv``, ``results.md`` (a Markdown table) and ``results.png`` (per-category accuracy of
every cell) are rewritten from all finished cells at the end.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import itertools
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from aurora.io import atomic_write_text, pyplot, save_figure, write_json
from aurora.recipes import resolve

RESULT = "result.json"


class GridError(ValueError):
    """A grid file that cannot be run: the message names the problem."""


# ------------------------------------------------------------------------------------------------ the grid


def set_dotted(cfg: dict[str, Any], key: str, value: Any) -> None:
    """``cfg[a][b][c] = value`` for ``key = "a.b.c"``, creating missing mappings."""
    parts = key.split(".")
    node = cfg
    for p in parts[:-1]:
        if not isinstance(node.get(p, {}), dict):
            raise GridError(f"cannot set {key!r}: {p!r} is not a mapping in the recipe")
        node = node.setdefault(p, {})
    node[parts[-1]] = copy.deepcopy(value)


def _label(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("name", json.dumps(value, sort_keys=True)))
    return str(value)


def load_grid(path: str | Path) -> dict[str, Any]:
    """Read and check a grid file; returns ``{base, overrides, axes: [{name, key, values, labels}]}``."""
    p = Path(path)
    if not p.is_file():
        raise GridError(f"grid file not found: {path}")
    grid = yaml.safe_load(p.read_text()) or {}
    if not isinstance(grid, dict):
        raise GridError(f"{path}: a grid is a mapping with base, overrides and axes")
    unknown = set(grid) - {"base", "overrides", "axes", "description", "eval_leads"}
    if unknown:
        raise GridError(f"{path}: unknown grid keys {sorted(unknown)}; known: axes, base, description, eval_leads, "
                        "overrides")
    leads = grid.get("eval_leads") or []
    if not isinstance(leads, list) or not set(leads) <= {"question", "generic", "none"}:
        raise GridError(f"{path}: eval_leads is a list of question, generic, none; got {leads!r}")
    if "base" not in grid:
        raise GridError(f"{path}: the grid needs a base recipe (base: recipes/demo.yaml)")
    axes = grid.get("axes") or []
    if not isinstance(axes, list) or not axes:
        raise GridError(f"{path}: axes must be a non-empty list of {{name, key, values}}")
    out = []
    for i, ax in enumerate(axes):
        if not isinstance(ax, dict) or not {"name", "key", "values"} <= set(ax):
            raise GridError(f"{path}: axis {i} needs name, key and values, got {ax!r}")
        values = ax["values"]
        if not isinstance(values, list) or not values:
            raise GridError(f"{path}: axis {ax['name']!r} has no values")
        labels = ax.get("labels") or [_label(v) for v in values]
        if len(labels) != len(values):
            raise GridError(f"{path}: axis {ax['name']!r} has {len(labels)} labels for {len(values)} values")
        if len(set(map(str, labels))) != len(labels):
            raise GridError(f"{path}: axis {ax['name']!r} has repeated labels {labels}; give distinct labels")
        out.append({"name": str(ax["name"]), "key": str(ax["key"]), "values": values, "labels": [str(x) for x in labels]})
    names = [a["name"] for a in out]
    if len(set(names)) != len(names):
        raise GridError(f"{path}: repeated axis names {names}")
    return {"base": str(grid["base"]), "overrides": dict(grid.get("overrides") or {}), "axes": out,
            "description": grid.get("description", ""), "eval_leads": [str(x) for x in leads]}


def cells(grid: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the axes' values: ``{name, labels: {axis: label}, settings: {key: value}}``."""
    out = []
    for combo in itertools.product(*[range(len(a["values"])) for a in grid["axes"]]):
        labels = {a["name"]: a["labels"][i] for a, i in zip(grid["axes"], combo)}
        settings = {a["key"]: a["values"][i] for a, i in zip(grid["axes"], combo)}
        name = "__".join(f"{k}={re.sub(r'[^A-Za-z0-9._-]+', '-', v)}" for k, v in labels.items())
        out.append({"name": name, "labels": labels, "settings": settings})
    return out


def parse_overrides(items: list[str] | None, grid: dict[str, Any] | None = None) -> dict[str, Any]:
    """``["trainer.max_steps=50", "model.merge={name: tome}"]`` -> ``{key: value}`` (values read as YAML); an item
    without ``=``, an empty key or a key that is one of the grid's axes is a GridError."""
    out: dict[str, Any] = {}
    axes = {a["key"]: a["name"] for a in (grid or {}).get("axes", [])}
    for item in items or []:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise GridError(f"--override {item!r}: give KEY=VALUE, e.g. trainer.max_steps=50")
        if key in axes:
            raise GridError(f"--override {key}: that is axis {axes[key]!r}'s key; change the grid's values instead")
        try:
            out[key] = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as e:
            raise GridError(f"--override {item!r}: the value is not YAML ({' '.join(str(e).split())})") from e
    return out


def cell_config(grid: dict[str, Any], cell: dict[str, Any], cell_dir: Path) -> dict[str, Any]:
    """The base recipe with the grid's overrides, then ``--override``'s (``grid["cli_overrides"]``), the cell's
    settings, and its own output directory."""
    cfg = yaml.safe_load(Path(resolve(grid["base"])).read_text())
    for key, value in [*grid["overrides"].items(), *grid.get("cli_overrides", {}).items()]:
        set_dotted(cfg, key, value)
    for key, value in cell["settings"].items():
        set_dotted(cfg, key, value)
    set_dotted(cfg, "trainer.default_root_dir", str(cell_dir))
    return cfg


# ------------------------------------------------------------------------------------------------ running


def mlflow_store(cfg: dict[str, Any]) -> tuple[str, str] | None:
    """(tracking URI, experiment) of a recipe whose ``trainer.logger`` is an MLFlowLogger, else None."""
    from aurora.train.lightning_cli import DEFAULT_TRACKING_URI

    logger = (cfg.get("trainer") or {}).get("logger")
    loggers = logger if isinstance(logger, list) else [logger]
    for lg in loggers:
        if isinstance(lg, dict) and str(lg.get("class_path", "")).endswith("MLFlowLogger"):
            args = lg.get("init_args") or {}
            return str(args.get("tracking_uri") or DEFAULT_TRACKING_URI), str(args.get("experiment_name") or "aurora")
    return None


class GridRun:
    """The grid's parent MLflow run: created on first use (or taken from ``<out>/mlflow.json``, so a resumed grid
    reuses it), its cells nested under it, the reports attached at the end."""

    def __init__(self, out: Path, uri: str, experiment: str) -> None:
        from mlflow.tracking import MlflowClient

        from aurora.train.tracking import MLFlowLogger, RUN_TAG, STAGE_TAG, canonical_uri

        self.uri, self.path = canonical_uri(uri), out / "mlflow.json"
        artifacts = MLFlowLogger(experiment, uri)._artifact_location  # makes the database's folder; beside it
        self.client = MlflowClient(tracking_uri=self.uri)
        old = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.run_id = None
        if old.get("tracking_uri") == self.uri:
            try:
                self.run_id = self.client.get_run(old["run_id"]).info.run_id
            except Exception:  # deleted, or another database: a new parent run
                self.run_id = None
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(experiment)
            exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
                experiment, artifact_location=artifacts)
            name = f"ablate-{out.resolve().name}"
            self.run_id = self.client.create_run(exp_id, run_name=name, tags={
                STAGE_TAG: "ablate", RUN_TAG: out.resolve().name}).info.run_id
            write_json(self.path, {"tracking_uri": self.uri, "run_id": self.run_id})

    @property
    def link(self) -> dict[str, str]:
        return {"tracking_uri": self.uri, "run_id": self.run_id}

    def finish(self, out: Path, rows: list[dict[str, Any]]) -> None:
        for name in ("results.md", "results.csv", "results.png"):
            if (out / name).is_file():
                self.client.log_artifact(self.run_id, str(out / name))
        if rows:
            best = max(rows, key=lambda r: r["accuracy"])
            self.client.log_metric(self.run_id, "best_accuracy", float(best["accuracy"]))
            self.client.set_tag(self.run_id, "aurora.best_cell", best["cell"])
        self.client.log_metric(self.run_id, "cells", float(len(rows)))
        self.client.set_terminated(self.run_id, "FINISHED")


def run_cell(cfg_path: Path, log=print, eval_leads: list[str] | None = None,
             parent: dict[str, str] | None = None, labels: dict[str, str] | None = None) -> dict[str, Any]:
    """Train one cell, then evaluate: loss and token accuracy on the validation split, answer accuracy (overall
    and per category) by generation on the held-out test split; for each of ``eval_leads`` the same test with that
    lead read before the video (``generic`` / ``none``: what answering from one reused state gets). With an MLflow
    logger the cell's run is named ``<cell>-ablate-cell``, nested under ``parent`` (the grid's run) and tagged with
    its ``labels``."""
    from aurora.train.lightning_cli import AuroraCLI
    from aurora.train.tracking import mlflow_loggers, set_identity, tag_runs

    cli = AuroraCLI(args=["--config", str(cfg_path)], run=False)
    trainer, model, dm = cli.trainer, cli.model, cli.datamodule
    tag_runs(trainer, "ablate-cell", run=cfg_path.parent.name, parent=parent)
    for lg in mlflow_loggers(trainer):
        set_identity(lg, "", {f"aurora.axis.{k}": str(v) for k, v in (labels or {}).items()})
    t0 = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    train_s = time.perf_counter() - t0
    train_loss = trainer.callback_metrics.get("train/loss")
    (val,) = trainer.validate(model, datamodule=dm, verbose=False)
    (test,) = trainer.test(model, datamodule=dm, verbose=False)
    vt_tokens = None
    vision = model.model.vision
    if hasattr(vision, "tokens_per_frame"):
        vt_tokens = vision.tokens_per_frame(dm.image_size, dm.image_size)
    result = {
        "train_steps": int(trainer.global_step),
        "train_seconds": round(train_s, 1),
        "train_loss_last": None if train_loss is None else float(train_loss),
        "val_loss": float(val["val/loss"]),
        "val_token_acc": float(val["val/token_acc"]),
        "accuracy": float(test["test/accuracy"]),
        "chance": float(test["test/chance"]),
        "per_category": {k.removeprefix("test/accuracy_"): float(v) for k, v in test.items()
                         if k.startswith("test/accuracy_")},
        "encoder_tokens_per_frame": vt_tokens,
    }
    if eval_leads:
        result["by_lead"] = {}
        for lead in eval_leads:
            dm.eval_lead = lead
            (m,) = trainer.test(model, datamodule=dm, verbose=False)
            result["by_lead"][lead] = {"accuracy": float(m["test/accuracy"]), "per_category": {
                k.removeprefix("test/accuracy_"): float(v) for k, v in m.items() if k.startswith("test/accuracy_")}}
        dm.eval_lead = None
    log(f"[ablate] {cfg_path.parent.name}: accuracy {result['accuracy']:.3f} (chance {result['chance']:.3f}), "
        f"val loss {result['val_loss']:.3f}, {result['train_steps']} steps in {train_s:.0f} s")
    return result


def run_grid(grid_path: str | Path, out: str | Path, log=print,
             overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run every cell not finished before (``overrides``: ``--override``'s, applied to every cell), then write the
    reports; see the module's docstring."""
    grid = load_grid(grid_path)
    grid["cli_overrides"] = dict(overrides or {})
    out = Path(out)
    todo = cells(grid)
    rows = []
    store = mlflow_store(cell_config(grid, todo[0], out / "cells" / todo[0]["name"])) if todo else None
    parent = GridRun(out, *store) if store else None
    for i, cell in enumerate(todo, 1):
        cell_dir = out / "cells" / cell["name"]
        result_path = cell_dir / RESULT
        cfg = cell_config(grid, cell, cell_dir)
        cfg_path = cell_dir / "config.yaml"
        if result_path.is_file():
            finished = json.loads(result_path.read_text())
            changed = settings_diff(finished.get("recipe"), cfg)
            if not changed:
                log(f"[ablate] {i}/{len(todo)} {cell['name']}: finished before, skipped")
                rows.append(finished)
                continue
            log(f"[ablate] {i}/{len(todo)} {cell['name']}: its settings changed since it finished "
                f"({'; '.join(changed[:4])}{' ...' if len(changed) > 4 else ''}): training it again")
            result_path.unlink()  # the old result no longer describes the cell
        else:
            log(f"[ablate] {i}/{len(todo)} {cell['name']}: training")
        atomic_write_text(cfg_path, yaml.safe_dump(cfg, sort_keys=False))
        result = {"cell": cell["name"], "labels": cell["labels"], "settings": cell["settings"],
                  **run_cell(cfg_path, log, grid.get("eval_leads"), parent and parent.link, cell["labels"]),
                  "recipe": cfg}  # what a resumed grid compares (config.yaml is the CLI's fully resolved copy)
        write_json(result_path, result)
        rows.append(result)
    write_reports(grid, rows, out)
    if parent is not None:
        parent.finish(out, rows)
        log(f"[ablate] MLflow: grid run {parent.run_id} in {parent.uri}, one nested run per cell")
    return rows


def settings_diff(before: Any, now: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between the recipe a finished cell recorded
    in its result.json (``recipe``: the base with the grid's overrides, ``--override``'s and the cell's settings)
    and the one it would run with now."""
    from aurora.train.tracking import flatten

    if not isinstance(before, dict):
        return ["no recipe recorded in its result.json"]
    old, new = flatten(before), flatten(now)

    def shown(d: dict[str, Any], k: str) -> str:
        return repr(d[k]) if k in d else "(unset)"

    return [f"{k.replace('/', '.')}: {shown(old, k)} -> {shown(new, k)}" for k in sorted(set(old) | set(new))
            if k not in old or k not in new or old[k] != new[k]]


# ------------------------------------------------------------------------------------------------ reports


def _categories(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(c for r in rows for c in r["per_category"]))


def table_rows(grid: dict[str, Any], rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    axes = [a["name"] for a in grid["axes"]]
    cats = _categories(rows)
    leads = list(dict.fromkeys(lead for r in rows for lead in r.get("by_lead", {})))
    head = [*axes, "accuracy", *[f"acc {c}" for c in cats],
            *[f"{lead} lead: {c}" for lead in leads for c in ("accuracy", *cats)], "chance", "val loss",
            "val token acc", "train loss (last)", "steps", "train s"]
    body = []
    for r in rows:
        by_lead = [f"{x:.3f}" for lead in leads for x in _lead_figures(r, lead, cats)]
        body.append([*[r["labels"][a] for a in axes], f"{r['accuracy']:.3f}",
                     *[f"{r['per_category'].get(c, float('nan')):.3f}" for c in cats], *by_lead, f"{r['chance']:.3f}",
                     f"{r['val_loss']:.3f}", f"{r['val_token_acc']:.3f}",
                     "-" if r["train_loss_last"] is None else f"{r['train_loss_last']:.3f}",
                     str(r["train_steps"]), f"{r['train_seconds']:.0f}"])
    return head, body


def _lead_figures(row: dict[str, Any], lead: str, cats: list[str]) -> list[float]:
    m = row.get("by_lead", {}).get(lead)
    if m is None:
        return [float("nan")] * (1 + len(cats))
    return [m["accuracy"], *[m["per_category"].get(c, float("nan")) for c in cats]]


def write_reports(grid: dict[str, Any], rows: list[dict[str, Any]], out: Path) -> None:
    head, body = table_rows(grid, rows)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(head)
    w.writerows(body)
    atomic_write_text(out / "results.csv", buf.getvalue())
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    atomic_write_text(out / "results.md", "\n".join(md) + "\n")
    write_plot(grid, rows, out / "results.png")


def plot_figure(grid: dict[str, Any], rows: list[dict[str, Any]]):
    """Grouped bars: overall and per-category accuracy of every cell, each bar annotated with its value (a 0.00
    or a row of equal values stays readable: a bar of height 0 still shows its number), chance as a dashed line,
    the y axis 0 to 1 plus room for the labels. Returns the matplotlib figure."""
    plt = pyplot("aurora ablate")

    cats = ["overall", *_categories(rows)]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(rows) * max(1, len(cats)) / 4 + 2), 4.6))
    width = 0.8 / len(cats)
    fontsize = 7 if len(rows) * len(cats) <= 24 else 5
    for j, c in enumerate(cats):
        ys = [r["accuracy"] if c == "overall" else r["per_category"].get(c, 0.0) for r in rows]
        bars = ax.bar([i + (j - (len(cats) - 1) / 2) * width for i in range(len(rows))], ys, width, label=c)
        ax.bar_label(bars, labels=[f"{y:.2f}" for y in ys], padding=1.5, fontsize=fontsize,
                     rotation=90 if len(cats) > 3 else 0)
    if rows:
        chance = sum(r["chance"] for r in rows) / len(rows)
        ax.axhline(chance, color="black", ls="--", lw=1, label=f"chance {chance:.2f}")
    axes = [a["name"] for a in grid["axes"] if len(a["values"]) > 1] or [grid["axes"][0]["name"]]
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(["\n".join(f"{a}={r['labels'][a]}" for a in axes) for r in rows], fontsize=8)
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.set_ylim(0, 1.22)  # accuracies: 0..1, plus room for the labels above a bar of 1.00 and the legend
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("held-out answer accuracy")
    steps = sorted({r["train_steps"] for r in rows})
    ax.set_title(f"ablation grid ({len(rows)} cells, {'/'.join(map(str, steps))} training steps)", fontsize=10)
    ax.legend(fontsize=7, ncol=len(cats) + 1, loc="upper center")
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def write_plot(grid: dict[str, Any], rows: list[dict[str, Any]], path: Path) -> None:
    """:func:`plot_figure` written to ``path`` (PNG, atomically)."""
    save_figure(plot_figure(grid, rows), path)


# ------------------------------------------------------------------------------------------------ command


def ablate_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="aurora ablate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", required=True, help="the grid YAML (recipes/ablations/*.yaml)")
    parser.add_argument("--out", required=True, help="output directory (cells/, results.csv/.md/.png)")
    parser.add_argument("--list", action="store_true", help="print the cells and exit")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted recipe key set in every cell, after the grid's overrides (repeatable; VALUE "
                             "is YAML), e.g. --override trainer.max_steps=50 --override data.batch_size=8")
    args = parser.parse_args(argv)
    try:
        path = resolve(args.grid)  # the file itself, else a packaged recipe of that name
        grid = load_grid(path)
        overrides = parse_overrides(args.override, grid)
        if args.list:
            for cell in cells(grid):
                print(cell["name"])
            return 0
        rows = run_grid(path, args.out, log=lambda s: print(s, file=sys.stderr, flush=True), overrides=overrides)
    except (GridError, FileNotFoundError) as e:
        parser.error(str(e))
    head, body = table_rows(grid, rows)
    print("| " + " | ".join(head) + " |")
    for row in body:
        print("| " + " | ".join(row) + " |")
    print(f"results written to {Path(args.out) / 'results.md'}, .csv and .png")
    return 0


if __name__ == "__main__":
    sys.exit(ablate_main(sys.argv[1:]))
