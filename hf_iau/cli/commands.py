"""Commands of ``hf-iau``: train, unlearn, evaluate, demo, ledger; the steps they share and the run files."""

from __future__ import annotations

import copy
import json
import os
import time
from typing import Any, Sequence

from .arguments import DataArguments, ModelArguments, RunArguments
from .data import Prepared, prepare_data
from .models import build_model, load_tokenizer, load_trained, peft_config_of
from .printing import print_summary, report_rows, stage, summary_table, train_loss_line, verdict

RUN_FILE = "hf_iau_run.json"


# --- run files ------------------------------------------------------------------------------------
def _is_main(args) -> bool:
    return getattr(args, "process_index", 0) == 0


def run_paths(run: RunArguments, args) -> dict[str, str]:
    """Folders of the original, unlearned and retrained models and of the report."""
    root = args.output_dir
    return {
        "original": run.original_model or os.path.join(root, "original"),
        "unlearned": run.unlearned_model or os.path.join(root, "unlearned"),
        "retrained": run.retrained_model or os.path.join(root, "retrained"),
        "report": run.report_dir or os.path.join(root, "report"),
    }


def _write_run(path: str, info: dict[str, Any], args) -> None:
    if _is_main(args) and os.path.isdir(path):
        with open(os.path.join(path, RUN_FILE), "w", encoding="utf-8") as fh:
            json.dump(info, fh, indent=2, default=str)


def _read_run(path: str) -> dict[str, Any]:
    """A model folder's run file; {} when the folder was not written by ``hf-iau``."""
    file = os.path.join(path, RUN_FILE)
    if not os.path.exists(file):
        return {}
    with open(file, encoding="utf-8") as fh:
        return json.load(fh)


# --- steps ----------------------------------------------------------------------------------------
def _trainer(model, args, prep: Prepared, train_dataset=None, peft_config=None):
    from ..trainer import IAUTrainer

    return IAUTrainer(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=prep.validation,
        data_collator=prep.collator, processing_class=prep.tokenizer, peft_config=peft_config,
    )


def step_train(model_args: ModelArguments, args, prep: Prepared, dataset, out_dir: str, kind: str) -> dict[str, Any]:
    """Train a fresh model on ``dataset`` and save it to ``out_dir``; returns the run info."""
    model = build_model(model_args, args, prep)
    trainer = _trainer(model, args, prep, dataset, peft_config_of(model_args, prep.task))
    start = time.perf_counter()
    out = trainer.train()
    wall = time.perf_counter() - start
    trainer.save_model(out_dir)  # every process calls it: the main one writes, the others wait
    logged = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    info = {
        "kind": kind, "train_wall_time_s": wall, "train_rows": len(dataset), "train_loss": out.training_loss,
        "final_train_loss": logged[-1] if logged else None, "global_steps": trainer.state.global_step,
        "processes": args.world_size,
        "gr_alpha": args.gr_alpha, "params": sum(p.numel() for p in trainer.model.parameters()),
        "trainable_params": sum(p.numel() for p in trainer.model.parameters() if p.requires_grad),
    }
    _write_run(out_dir, info, args)
    return {"trainer": trainer, **info}


def step_unlearn(model_args: ModelArguments, run: RunArguments, args, prep: Prepared, model, out_dir: str,
                 parent: str | None = None) -> dict[str, Any]:
    """Unlearn ``prep.forget`` from ``model`` (in place) and save it to ``out_dir``; ``parent``: the folder the model
    was saved in (its card and ledger record where the weights came from and how they were trained).

    IAU's held-out ("never seen") data is the validation split; the test split is not touched.
    """
    trainer = _trainer(model, args, prep, train_dataset=prep.train)
    trainer.dataset_name = prep.dataset_name
    if parent is not None:
        trainer.parent_checkpoint = parent
    held_out = {"held_out_dataset": prep.validation} if run.method == "iau" else {}
    result = trainer.unlearn(prep.forget, retain_dataset=prep.retain, method=run.method, allow_noop=run.allow_noop,
                             **held_out)
    trainer.save_model(out_dir)  # every process calls it: the main one writes, the others wait
    info = {
        "kind": "unlearned", "method": run.method, "processes": args.world_size, "unlearn_wall_time_s": result.metrics.get("wall_time_s"),
        "forget_fingerprint": result.forget_fingerprint, "forget_rows": len(prep.forget),
        "retain_rows": len(prep.retain), "validation_rows": len(prep.validation), "metrics": result.metrics,
    }
    _write_run(out_dir, info, args)
    return {"trainer": trainer, "result": result, **info}


def shard_for_unlearning(model):
    """FSDP2: ``hf_iau.sharding.shard_per_block`` (``fully_shard`` per transformer block and the root)."""
    try:
        from ..sharding import shard_per_block
    except ImportError as err:
        raise SystemExit(f"hf-iau: --fsdp2_shard needs hf_iau.sharding.shard_per_block, which failed to import: {err}") from err
    return shard_per_block(model)


def evaluate_models(models: dict[str, Any], prep: Prepared, batch_size: int, seed: int = 0):
    """``hf_iau.report.evaluate_unlearning`` of the unlearned model against original/retrained (when given).

    Members are the forget rows, non-members and utility come from the test split only.
    """
    from ..report import evaluate_unlearning

    if "unlearned" not in models:
        raise ValueError(f"evaluate_models: no 'unlearned' model among {sorted(models)}; run `hf-iau unlearn` first.")
    return evaluate_unlearning(
        models["unlearned"], models.get("original"), models.get("retrained"),
        forget=prep.forget, retain=prep.retain, test=prep.test, data_collator=prep.collator,
        batch_size=batch_size, tokenizer=prep.tokenizer if prep.task == "causal-lm" else None, seed=seed,
    )


def _is_image(data: DataArguments, model: ModelArguments) -> bool:
    return model.task == "image-classification" or data.dataset_name in ("mnist5k", "digits")


def _split_line(prep: Prepared) -> str:
    return (f"data       train {len(prep.train)} (forget {len(prep.forget)}, retain {len(prep.retain)}), "
            f"validation {len(prep.validation)} (reference, stopping), test {len(prep.test)} (grading only); task {prep.task}")


def _finish_report(models, prep, run, args, paths, times, title: str, extra: Sequence[str] = ()) -> Any:
    if not _is_main(args):
        return None
    from ..hub import update_card

    report = evaluate_models(models, prep, run.eval_batch_size, args.seed)
    report.save(paths["report"])
    update_card(paths["unlearned"], report)  # the card now shows the comparison with the retrained model
    rows = report_rows(report)
    warnings = [f"warning    {w}" for w in report.info.get("warnings", [])]
    body = [_split_line(prep), "", summary_table(rows, times), "", verdict(rows, times), "", *warnings, *extra,
            f"report     {paths['report']} (report.json, report.md, report.png)"]
    print_summary(title, body)
    return report


# --- commands -------------------------------------------------------------------------------------
def setup(args) -> None:
    """Quiet transformers' info logs; create ``output_dir``."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_warning()
    os.makedirs(args.output_dir, exist_ok=True)


def cmd_train(data: DataArguments, model: ModelArguments, run: RunArguments, args) -> int:
    """Train the original model (``train_on=full``) or the gold model (``train_on=retain``)."""
    prep = prepare_data(data, model, args)
    paths = run_paths(run, args)
    target = paths["original"] if run.train_on == "full" else paths["retrained"]
    dataset = prep.train if run.train_on == "full" else prep.retain
    info = step_train(model, args, prep, dataset, target, "original" if run.train_on == "full" else "retrained")
    if _is_main(args):
        print_summary(
            f"hf-iau train ({run.train_on})",
            [f"model      {info['params']:,} params ({info['trainable_params']:,} trainable), task {prep.task}",
             f"data       {len(dataset)} training rows, validation {len(prep.validation)}, test {len(prep.test)}; GR alpha {args.gr_alpha}",
             f"time       {info['train_wall_time_s']:.1f} s, {info['global_steps']} steps on {info['processes']} process(es)",
             train_loss_line(info["final_train_loss"], info["train_loss"]),
             f"saved      {target}"],
        )
    return 0


def cmd_unlearn(data: DataArguments, model: ModelArguments, run: RunArguments, args) -> int:
    """Make the original model forget the ``forget`` rows (optionally FSDP2-sharded first)."""
    paths = run_paths(run, args)
    tok = load_tokenizer(paths["original"], args) if not _is_image(data, model) else None
    prep = prepare_data(data, model, args, tokenizer=tok)
    original = load_trained(paths["original"], model, prep, args)
    if run.fsdp2_shard:
        original = shard_for_unlearning(original)
    info = step_unlearn(model, run, args, prep, original, paths["unlearned"])
    if _is_main(args):
        m = info["metrics"]
        body = [f"forget set  {info['forget_rows']} rows, fingerprint {info['forget_fingerprint'][:16]}…; retain {info['retain_rows']} rows; "
                f"reference: validation ({info['validation_rows']} rows)",
                f"method      {run.method}: {int(m.get('steps', 1))} step(s), update norm {m.get('update_norm', float('nan')):.4g}"]
        for key in ("forget_loss", "retain_loss", "forget_accuracy", "retain_accuracy"):
            if f"{key}_before" in m:
                body.append(f"{key:<16}{m[f'{key}_before']:>10.4f} -> {m[f'{key}_after']:.4f}")
        body.append(f"time        {m.get('wall_time_s', float('nan')):.2f} s")
        if "passes_vs_retrain" in m:
            body.append(f"cost        {int(m.get('example_gradient_passes', 0)):,} example-gradient passes = "
                        f"{100 * m['passes_vs_retrain']:.1f}% of retraining's {int(m['retrain_passes_estimate']):,} (this recipe's schedule)")
        body.append(f"saved       {paths['unlearned']}")
        print_summary("hf-iau unlearn", body)
    return 0


def cmd_evaluate(data: DataArguments, model: ModelArguments, run: RunArguments, args) -> int:
    """Report original / unlearned / retrained on forget, retain and test (retrains the gold model when missing)."""
    paths = run_paths(run, args)
    if not os.path.isdir(paths["unlearned"]):
        raise SystemExit(f"hf-iau: no unlearned model at {paths['unlearned']}; run `hf-iau unlearn` first (or pass --unlearned_model).")
    tok = load_tokenizer(paths["original"], args) if not _is_image(data, model) else None
    stage(args, "[1/3] preparing the data splits")
    prep = prepare_data(data, model, args, tokenizer=tok)
    if not os.path.isdir(paths["retrained"]):
        if not run.retrain_if_missing:
            raise SystemExit(f"hf-iau: no retrained model at {paths['retrained']}; run `hf-iau train --train_on retain`.")
        stage(args, f"[2/3] no retrained model: retraining the gold model on the {len(prep.retain)} retained rows -> {paths['retrained']}")
        step_train(model, args, prep, prep.retain, paths["retrained"], "retrained")
    else:
        stage(args, f"[2/3] retrained model: {paths['retrained']}")
    models = {name: load_trained(paths[name], model, prep, args, trainable=False)
              for name in ("original", "unlearned", "retrained") if os.path.isdir(paths[name])}
    stage(args, f"[3/3] evaluating {', '.join(models)} on forget {len(prep.forget)}, retain {len(prep.retain)} "
                f"and test {len(prep.test)} rows (losses, accuracy, membership inference)")
    times = {"unlearned": _read_run(paths["unlearned"]).get("unlearn_wall_time_s"),
             "retrained": _read_run(paths["retrained"]).get("train_wall_time_s")}
    _finish_report(models, prep, run, args, paths, times, "hf-iau evaluate")
    return 0


def cmd_demo(data: DataArguments, model: ModelArguments, run: RunArguments, args) -> int:
    """Train (GR) -> unlearn -> retrain -> evaluate, in one process."""
    total = time.perf_counter()
    paths = run_paths(run, args)
    prep = prepare_data(data, model, args)
    if _is_main(args):
        print(f"[1/4] training the original model on {len(prep.train)} rows "
              f"({len(prep.forget)} to be forgotten{', mislabelled' if data.forget_label_noise else ''}), GR alpha={args.gr_alpha}; "
              f"validation {len(prep.validation)} rows, test {len(prep.test)} rows (grading only)", flush=True)
    orig = step_train(model, args, prep, prep.train, paths["original"], "original")
    original_copy = copy.deepcopy(orig["trainer"].model)
    if _is_main(args):
        print(f"[2/4] deletion request: unlearning {len(prep.forget)} rows with {run.method} (reference: validation split)", flush=True)
    unl = step_unlearn(model, run, args, prep, orig["trainer"].model, paths["unlearned"], parent=paths["original"])
    if _is_main(args):
        print(f"[3/4] retraining the gold model on the {len(prep.retain)} retained rows", flush=True)
    ret = step_train(model, args, prep, prep.retain, paths["retrained"], "retrained")
    if _is_main(args):
        print("[4/4] evaluating against the retrained model on the test split", flush=True)
    models = {"original": original_copy, "unlearned": unl["trainer"].model, "retrained": ret["trainer"].model}
    times = {"original": orig["train_wall_time_s"], "unlearned": unl["unlearn_wall_time_s"], "retrained": ret["train_wall_time_s"]}
    extra = [f"models     {paths['original']}, {paths['unlearned']} (card + ledger), {paths['retrained']}",
             f"forget fp  {unl['forget_fingerprint'][:16]}… (fingerprint of the forget ids; no content is stored)",
             f"wall time  {time.perf_counter() - total:.0f} s in all"]
    _finish_report(models, prep, run, args, paths, times, "hf-iau demo: IAU vs retraining", extra)
    return 0


def cmd_ledger(argv: Sequence[str]) -> int:
    """``hf-iau ledger ...``: ``hf_iau.ledger.main_ledger`` parses and runs it."""
    from ..ledger import main_ledger

    return int(main_ledger(list(argv)) or 0)
