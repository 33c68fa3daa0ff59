"""`evaluator watch`: the daemon. TensorFlow is imported by the service it starts, not here."""

from __future__ import annotations

import click

from evaluator.checkpoints import EMA_NAME
from evaluator.cli.options import EXPORT_FORMATS, Duration, Size, check_metrics, db_option, log_options, name_option
from evaluator.options import DEFAULT_PIN_BUDGET, DEVICES, METRIC_NAMES, ORDERS, WatchOptions


@click.command()
@click.argument("model_dirs", nargs=-1, type=click.Path(file_okay=False, path_type=str))
@click.option("--task", "task_spec", envvar="EVALUATOR_TASK", show_envvar=True, metavar="SPEC",
              help="The model and validation data: package.module:NAME or path/to/file.py:NAME, an "
                   "object with validation_data() and either model() (TF2: a Keras 3 model or tf.Module) "
                   "or inference(features) -> logits (tf.compat.v1 graph code). Or, without code, "
                   "--meta-graph, --savedmodel or --frozen-graph with --data.")
@click.option("--meta-graph", is_flag=True,
              help="No code: import the trainer's graph from the first checkpoint's .meta (tf.compat.v1 Saver) "
                   "and evaluate --output fed --input with --data; EMA as for tasks. E.g. --meta-graph --input "
                   "x-input:0 --output layer2/add:0 --data valid.npz")
@click.option("--savedmodel", is_flag=True,
              help="No code: MODEL_DIR holds numbered SavedModel versions (1/, 2/, ... as TF Serving reads them; "
                   "or is one SavedModel): each version is evaluated once, its step the version number unless it "
                   "carries a global_step. E.g. --savedmodel --data valid.npz")
@click.option("--frozen-graph", is_flag=True,
              help="No code: MODEL_DIR holds frozen GraphDef files (*.pb, from freeze_graph or "
                   "convert_variables_to_constants), each evaluated once, its step the last number in its name. "
                   "E.g. --frozen-graph --input x-input:0 --output layer2/add:0 --data valid.npz")
@click.option("--signature", metavar="NAME",
              help="No code, --savedmodel: the signature evaluated (default serving_default); its one input is fed "
                   "the features.")
@click.option("--input", "input_name", metavar="TENSOR",
              help="No code: the tensor the validation features are fed into (a placeholder), e.g. x-input:0.")
@click.option("--output", "output_name", metavar="TENSOR",
              help="No code: the tensor of logits (or a regression's outputs) evaluated, e.g. layer2/add:0; with "
                   "--savedmodel, the signature's output key (needed when it has several), e.g. logits.")
@click.option("--data", "data_files", multiple=True, metavar="[NAME=]FILE",
              help="No code: the validation data, an .npz (arrays x and y, or --data-keys) or a TFRecord file "
                   "of tf.train.Example (--feature, --label). Repeat as NAME=FILE for named validation sets, "
                   "e.g. --data clean=valid.npz --data noisy=noisy.npz.")
@click.option("--data-keys", metavar="FEATURES,LABELS",
              help="No code: the .npz arrays of the features and the labels (default x,y), e.g. images,labels.")
@click.option("--feature", metavar="NAME:SHAPE:DTYPE",
              help="No code, TFRecord data: the tf.train.Example feature fed to --input, with its shape per "
                   "example and type, e.g. pixels:64:float32 or image:28,28:float32.")
@click.option("--label", metavar="NAME",
              help="No code, TFRecord data: the tf.train.Example feature holding the label (a class index, or "
                   "a regression's target), e.g. label.")
@db_option
@click.option("--once", is_flag=True, help="Evaluate what is pending, then exit (cron, CI).")
@name_option
@click.option("--poll", is_flag=True,
              help="Poll the directory instead of using inotify events (NFS and other network file "
                   "systems). A checkpoint that lives at least one poll interval is pinned at the look "
                   "that sees it, and evaluated whatever training does next; one that training writes "
                   "and deletes (max_to_keep) within one interval is never seen and gets no row: prefer "
                   "events where they work.")
@click.option("--poll-interval", type=click.FloatRange(min=0.05), default=1.0, show_default=True,
              metavar="SECONDS", help="With --poll: how often to scan the directory; for s3:// and gs:// "
                                       "model directories (always polled): how often to list their objects.")
@click.option("--rescan", "rescan_interval", type=click.FloatRange(min=0.1), default=10.0,
              show_default=True, metavar="SECONDS",
              help="Re-read the state file this often even without events (a missed event only delays).")
@click.option("--wait-for-dir", is_flag=True,
              help="If MODEL_DIR does not exist yet, wait for it instead of failing.")
@click.option("--ema/--no-ema", default=True, show_default=True,
              help="Restore the exponential-moving-average shadow weights (--no-ema: the raw weights).")
@click.option("--ema-name", default=EMA_NAME, show_default=True,
              help="Name of the tf.train.ExponentialMovingAverage the trainer used (averages named "
                   "<var>/<name>); Keras use_ema averages are found without it.")
@click.option("--device", type=click.Choice(DEVICES), default="auto", show_default=True,
              help="Where to evaluate; auto takes the GPU when TensorFlow sees one (memory growth on).")
@click.option("--batch-size", type=click.IntRange(min=1), metavar="N",
              help="Batch size for numpy validation data. Default: the task's batch_size, else 1024.")
@click.option("--stop-grace", type=click.FloatRange(min=0), default=20.0, show_default=True,
              metavar="SECONDS",
              help="On SIGTERM/SIGINT/SIGHUP, let the evaluation in progress finish if it can within "
                   "this time; else it is abandoned (no row) and runs again at the next start.")
@click.option("--missing-grace", type=click.FloatRange(min=0), default=60.0, show_default=True,
              metavar="SECONDS",
              help="A listed checkpoint that never appears on disk is recorded `missing` after this "
                   "long, once a newer checkpoint is there (a copy may still be bringing it).")
@click.option("--retries", type=click.IntRange(min=1, max=1000), default=5, show_default=True, metavar="N",
              help="Failures that are not a checkpoint's own (validation data, task code, the machine) "
                   "are retried with backoff (1, 2, 4... s); after N in a row, exit 75 to be restarted.")
@click.option("--lease", type=click.FloatRange(min=1), default=90.0, show_default=True, metavar="SECONDS",
              help="A checkpoint being evaluated is claimed in the database; a claim whose evaluator "
                   "died is taken over after this long (a live one renews it every lease/3).")
@click.option("--db-wait", type=click.FloatRange(min=0), default=60.0, show_default=True, metavar="SECONDS",
              help="At start, wait this long for a locked or unreachable database, then exit 75.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME", callback=check_metrics,
              help="A built-in metric to compute besides accuracy and loss (repeatable): "
                   f"{', '.join(METRIC_NAMES)}. A task can define its own (its `metrics`).")
@click.option("--summaries/--no-summaries", default=True, show_default=True,
              help="Write each checkpoint's metrics as TensorBoard scalars at its step.")
@click.option("--summary-dir", type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              envvar="EVALUATOR_SUMMARY_DIR", show_envvar=True,
              help="Where the event files go. Default: MODEL_DIR/eval (MODEL_DIR/eval_NAME with --name), "
                   "so `tensorboard --logdir MODEL_DIR` shows training and evaluation together.")
@click.option("--best-metric", metavar="NAME",
              help="The metric the best checkpoints are chosen by, in its direction (SET/NAME for another "
                   "validation set than the first). Default: accuracy, else (a regression) loss.")
@click.option("--keep-best", type=click.IntRange(min=0), default=1, show_default=True, metavar="N",
              help="Keep the N best checkpoints where training's max_to_keep cannot delete them (0: keep none).")
@click.option("--export-dir", type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              envvar="EVALUATOR_EXPORT_DIR", show_envvar=True,
              help="Where the best checkpoints are kept. Default: MODEL_DIR/export/best (best_NAME with --name).")
@click.option("--export", "exports", multiple=True, type=click.Choice(EXPORT_FORMATS),
              help="Also write each kept checkpoint as a SavedModel (EXPORT_DIR/savedmodel/STEP, signature "
                   "serving_default: features -> logits) or, for graph tasks, a frozen GraphDef "
                   "(EXPORT_DIR/frozen/STEP.pb), with the weights evaluated (the averages). Repeatable.")
@click.option("--until-step", type=click.IntRange(min=0), metavar="N",
              help="Stop (exit 0) after evaluating a checkpoint at step N or later.")
@click.option("--idle-timeout", type=Duration(), metavar="DURATION",
              help="Stop (exit 0) after nothing new for this long: 90, 90s, 15m, 2h.")
@click.option("--done-file", metavar="NAME",
              help="When training writes MODEL_DIR/NAME, evaluate what is pending and stop (exit 0).")
@click.option("--root", "roots", multiple=True, type=click.Path(file_okay=False, path_type=str), metavar="DIR",
              help="Serve every directory below DIR (to --depth) that holds a `checkpoint` state file (or Keras "
                   "weight files), found as runs appear, forgotten when they disappear. Repeatable.")
@click.option("--depth", type=click.IntRange(min=0, max=20), default=3, show_default=True, metavar="N",
              help="With --root: how many directory levels below it to look for runs.")
@click.option("--order", type=click.Choice(ORDERS), default="oldest", show_default=True,
              help="Which pending checkpoint of a run first: every one oldest step first, or the newest first "
                   "(behind a fast trainer, the latest numbers now and the older ones after).")
@click.option("--pin-budget", type=Size(), default=DEFAULT_PIN_BUDGET, show_default=True, metavar="SIZE",
              help="A checkpoint is pinned the moment it is complete (hard links in MODEL_DIR/.evaluator/pins), "
                   "so training's max_to_keep cannot take it before it is evaluated. Where a hard link cannot "
                   "be made, its files are copied, up to this much in all (bytes, 500M, 20G, or a share of the "
                   "free space, 10%); past it, such checkpoints are not pinned (a warning says so).")
@log_options
def watch(model_dirs: tuple[str, ...], roots: tuple[str, ...], depth: int, order: str, task_spec: str | None,
          meta_graph: bool, savedmodel: bool, frozen_graph: bool, signature: str | None, input_name: str | None, output_name: str | None, data_files: tuple[str, ...],
          data_keys: str | None, feature: str | None, label: str | None, db_url: str | None, once: bool, name: str, poll: bool,
          poll_interval: float, rescan_interval: float, wait_for_dir: bool, ema: bool, ema_name: str,
          device: str, batch_size: int | None, stop_grace: float, missing_grace: float, retries: int,
          lease: float, db_wait: float, metrics: tuple[str, ...], summaries: bool, summary_dir: str | None,
          best_metric: str | None, keep_best: int, export_dir: str | None, exports: tuple[str, ...],
          until_step: int | None, idle_timeout: float | None, done_file: str | None, pin_budget: int | str,
          log_format: str, log_level: str) -> int:
    """Evaluate every checkpoint in MODEL_DIR (one or several, or every run below --root), then
    each new one as training writes it.

    Each checkpoint listed in MODEL_DIR/checkpoint (or on disk beside those listed, and, for a
    TF2 task, each *.weights.h5 / *.keras file) is restored into the model built once from
    --task, with the exponential moving averages the trainer kept (Keras use_ema,
    tf.train.ExponentialMovingAverage; --no-ema for raw weights), run over every validation set
    the task gives, and recorded as one row: step, metrics (accuracy and loss by default, the
    task's own and --metric's), examples, timings and status (ok; missing: deleted before it
    could be read; failed: with the error). A restart resumes where the rows end. Stops on
    Ctrl-C, SIGTERM or SIGHUP; logs go to stderr.

    A task may define `metrics` (a list of built-in names, or a mapping from a name to a
    built-in name, a function (labels, outputs) -> per-example values, a keras.metrics.Metric,
    or a (metric, "max"|"min") pair) and return several validation sets from
    validation_data() as a mapping from a name to a set; see the README.

    No code: with --meta-graph, a model directory of tf.compat.v1 Saver checkpoints is evaluated
    from its own graph (the first checkpoint's .meta), feeding --data into --input and reading
    --output; with --savedmodel, each numbered SavedModel version of an export directory; with
    --frozen-graph, each frozen .pb file. No task file needed; see the README's "No code" section.

    Object storage: MODEL_DIR (or --root) may be s3://BUCKET/PREFIX or gs://BUCKET/PREFIX
    (pip install 'evaluator[s3]' or 'evaluator[gcs]'; credentials and endpoints from the cloud's
    usual environment). Its objects are listed every --poll-interval; each complete checkpoint
    is downloaded into $XDG_CACHE_HOME/evaluator/staging (within --pin-budget) and evaluated from
    there (a copy staged but not recorded is evaluated after a restart); summaries and the best
    kept go to local directories (the log says where).

    Exit status: 0 stopped (or --once done); 2 configuration error (fix it); 3 --once left
    something unevaluated (failed rows, unreadable state file, listed files absent); 75 the
    database or the task's environment failed for now (restart it); 1 a bug.

    \b
    Examples:
      evaluator watch ./model_dir --task examples/digits/task.py:TASK
      evaluator watch /nfs/job1 --task mypkg.eval:TASK --poll --db sqlite:////srv/evals.db
      evaluator watch ./model_dir --task mypkg.eval:TASK --once    # evaluate what is there, exit
      evaluator watch ./model_dir --meta-graph --input x-input:0 --output layer2/add:0 --data valid.npz
      evaluator watch ./export --savedmodel --data valid.npz    # 1/, 2/, ... SavedModel versions
      evaluator watch ./frozen --frozen-graph --input x-input:0 --output layer2/add:0 --data valid.npz
      evaluator watch s3://bucket/runs/a --task mypkg.eval:TASK    # AWS_* from the environment
    """
    from evaluator import log, nocode
    from evaluator.service import Service
    from evaluator.store import resolve_url

    log.configure(log_format, log_level)

    model_dirs = tuple(d for d in model_dirs if d)  # systemd's empty $MODEL_DIR of a --root instance
    if not model_dirs and not roots:
        raise click.UsageError("give a MODEL_DIR (or several), or --root DIR")
    request = nocode.parse(meta_graph=meta_graph, savedmodel=savedmodel, frozen_graph=frozen_graph,
                           input_name=input_name, output_name=output_name, signature=signature, data=data_files, data_keys=data_keys,
                           feature=feature, label=label, task=task_spec, locations=len(model_dirs),
                           roots=len(roots))
    options = WatchOptions(
        model_dir=model_dirs[0] if model_dirs else "", model_dirs=tuple(model_dirs[1:]), roots=tuple(roots),
        depth=depth, order=order, task=request.describe() if request else str(task_spec),
        nocode=request, db_url=resolve_url(db_url), once=once, poll=poll,
        poll_interval=poll_interval, rescan_interval=rescan_interval, wait_for_dir=wait_for_dir,
        ema=ema, ema_name=ema_name, device=device, batch_size=batch_size, stop_grace=stop_grace,
        name=name, missing_grace=missing_grace, retries=retries, lease=lease, db_wait=db_wait,
        metrics=tuple(dict.fromkeys(metrics)), summaries=summaries, summary_dir=summary_dir,
        best_metric=best_metric, keep_best=keep_best, export_dir=export_dir, export=tuple(dict.fromkeys(exports)),
        until_step=until_step, idle_timeout=idle_timeout, done_file=done_file, pin_budget=pin_budget,
    )
    return Service(options).run(own_process=True)
