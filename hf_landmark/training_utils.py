"""Small pieces shared by the pre-training and fine-tuning scripts."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch

from .errors import UserInputError
from .fileio import CHECKPOINT_NAME as _CHECKPOINT
from .fileio import SET_ASIDE_PREFIX, list_checkpoints, replace_directory

MIXED_PRECISION_CHOICES = ("auto", "no", "fp16", "bf16")
MIXED_PRECISION_HELP = (
    "auto: fp16 on CUDA; on a CPU with bf16 instructions, whichever of bf16 and fp32 a timed training step "
    "of this job is faster in (recorded); fp32 on other CPUs; or no, fp16, bf16"
)


def cpu_has_amx() -> bool:
    """Whether this CPU has AMX tiles (oneDNN's fast bf16 path); the one probe ``auto`` uses."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


def cpu_has_bf16() -> bool:
    """Whether oneDNN has native bf16 kernels on this CPU (AVX512-BF16 or AMX); elsewhere bf16
    autocast is emulated and always slower."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return cpu_has_amx()


def training_step_probe(model, inputs: dict):
    """A probe step for :func:`choose_mixed_precision`: one forward and backward pass of a copy
    of ``model`` (made on first use; the job's model and its statistics are left untouched; or
    a function that builds one) on ``inputs``, whose output's ``loss`` (or ``sample``'s mean
    square) is back-propagated."""
    import copy

    held = {}

    def step():
        if "model" not in held:
            held["model"] = (copy.deepcopy(model) if isinstance(model, torch.nn.Module) else model()).train()
        out = held["model"](**inputs)
        loss = out.loss if getattr(out, "loss", None) is not None else out.sample.float().pow(2).mean()
        loss.backward()

    return step


def probe_precision(step, repeats: int = 2, timer=None) -> dict:
    """Time ``step()`` (one forward and backward pass of the job, at its size) in fp32 and under
    bf16 autocast on the CPU, after one warm-up each; the faster one is ``choice`` (``"no"`` or
    ``"bf16"``), with the best seconds of each in ``fp32_s`` / ``bf16_s``."""
    import contextlib
    import time

    timer = timer or time.perf_counter
    seconds = {}
    for name, context in (
        ("no", contextlib.nullcontext),
        ("bf16", lambda: torch.autocast("cpu", dtype=torch.bfloat16)),
    ):
        with context():
            step()  # warm-up: oneDNN builds its kernels for these shapes
            best = float("inf")
            for _ in range(repeats):
                start = timer()
                step()
                best = min(best, timer() - start)
        seconds[name] = best
    choice = "bf16" if seconds["bf16"] < seconds["no"] else "no"
    return {"choice": choice, "fp32_s": seconds["no"], "bf16_s": seconds["bf16"]}


def choose_mixed_precision(choice: str, step=None) -> tuple[str, dict | None]:
    """``--mixed-precision`` resolved for one job: ``auto`` on a CPU with bf16 instructions is
    decided by :func:`probe_precision` on ``step`` (returned as the second value, for the
    training record), elsewhere as :func:`default_mixed_precision`; the others as given."""
    if choice == "auto" and step is not None and not torch.cuda.is_available() and cpu_has_bf16():
        with torch.random.fork_rng():  # the job's random numbers are the same with or without the probe
            probe = probe_precision(step)
        return probe["choice"], probe
    return resolve_mixed_precision(choice), None


def default_mixed_precision() -> str:
    """The mixed precision that speeds training up on this device.

    fp16 with loss scaling on CUDA. On a CPU, bf16 autocast pays off throughout only where
    oneDNN has AMX tiles. On AVX512-BF16 without AMX its bf16 convolutions are slower than
    fp32 at the 64-128 px that CPU training uses (one pre-training step of the ``small``
    U-Net at 64 px, batch 8: 1.35 s bf16 vs 1.08 s fp32; bf16 wins ~15 % only at 256 px), so
    there the default is fp32. fp16 on CPU is a silent no-op in Accelerate and is never
    chosen. ``--mixed-precision bf16`` forces bf16 anywhere.
    """
    if torch.cuda.is_available():
        return "fp16"
    return "bf16" if cpu_has_bf16() and cpu_has_amx() else "no"


def resolve_mixed_precision(choice: str) -> str:
    if choice == "auto":
        return default_mixed_precision()
    if choice == "fp16" and not torch.cuda.is_available():
        raise UserInputError("--mixed-precision: fp16 has no effect on CPU (Accelerate ignores it); use bf16 or no")
    return choice


def make_accelerator(mixed_precision: str, **kwargs):
    """``(accelerator, autocast, precision)`` for one training run at ``mixed_precision``
    (a choice of :data:`MIXED_PRECISION_CHOICES`, resolved by :func:`resolve_mixed_precision`).

    Accelerate keeps one precision per process: the first ``Accelerator`` fixes it, and a later
    one asking for another raises. So that ``finetune()``, ``pretrain()`` or ``benchmark()``
    can run one after another in a notebook or a test session whatever precision each
    resolves to, a run whose precision differs from the process's keeps the process's
    ``Accelerator`` with Accelerate's autocast switched off (``AutocastKwargs(enabled=False)``)
    and applies its own precision with ``autocast()``: ``torch.autocast`` in bf16, or nothing
    for fp32. fp16 needs Accelerate's loss scaler, so a process fixed at fp16 trains later runs
    in fp16 or fp32 only, and fp16 after another precision is refused. Wrap every training
    forward pass in ``autocast()``.
    """
    import contextlib

    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, is_initialized
    from accelerate.utils import AutocastKwargs

    precision = resolve_mixed_precision(mixed_precision)
    fixed = AcceleratorState().mixed_precision if is_initialized() else None
    if fixed is None or fixed == precision:
        accelerator = Accelerator(mixed_precision=precision, **kwargs)
        return accelerator, accelerator.autocast, precision
    if precision == "fp16" or (fixed == "fp16" and precision == "bf16"):
        raise UserInputError(
            f"--mixed-precision: this process already trained in {fixed} and Accelerate fixes one precision per "
            f"process; {precision} needs a new process (or pass --mixed-precision {fixed} or no)"
        )
    handlers = [*kwargs.pop("kwargs_handlers", []), AutocastKwargs(enabled=False)]
    accelerator = Accelerator(mixed_precision=fixed, kwargs_handlers=handlers, **kwargs)
    device_type = accelerator.device.type

    def autocast():
        if precision == "bf16":
            return torch.autocast(device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    return accelerator, autocast, precision


def resolve_resume(output_dir: str | os.PathLike, resume: str | None) -> tuple[int, Path] | None:
    """``latest`` → the newest complete checkpoint (or None); a path → that checkpoint."""
    if not resume:
        return None
    if resume == "latest":
        ckpts = list_checkpoints(output_dir)
        return ckpts[-1] if ckpts else None
    path = Path(resume).expanduser()
    m = _CHECKPOINT.match(path.name)
    if not path.exists():
        raise UserInputError(
            f"--resume-from-checkpoint: {resume}: no such folder (give a checkpoint-<step> folder or 'latest')"
        )
    if not path.is_dir() or not m:
        raise UserInputError(
            f"{path}: --resume-from-checkpoint: not a checkpoint folder (expected .../checkpoint-<step> or 'latest')"
        )
    return int(m.group(1)), path


def staging_dir(output_dir: str | os.PathLike, step: int) -> Path:
    """The temporary folder checkpoint ``step`` is written into; see :func:`commit_checkpoint`."""
    return Path(output_dir) / f".checkpoint-{step}.partial"


def commit_checkpoint(tmp: Path, output_dir: str | os.PathLike, step: int) -> Path:
    """Atomically publish a staged checkpoint as ``checkpoint-<step>``."""
    final = Path(output_dir) / f"checkpoint-{step}"
    replace_directory(tmp, final)
    return final


def save_checkpoint(accelerator, output_dir: str | os.PathLike, step: int, write_files) -> Path | None:
    """Write ``checkpoint-<step>`` atomically: every process saves its Accelerate state
    (optimizer, RNG: what an exact resume needs) into the staged folder's ``state/``, then the
    main process calls ``write_files(staged_folder)`` (weights, record, card) and renames the
    folder into place. Returns the final folder on the main process."""
    accelerator.wait_for_everyone()
    tmp_path = staging_dir(output_dir, step)
    if accelerator.is_main_process and tmp_path.exists():
        shutil.rmtree(tmp_path)
    accelerator.wait_for_everyone()
    os.makedirs(tmp_path / "state", exist_ok=True)
    accelerator.save_state(str(tmp_path / "state"))
    # All processes must have finished before the main process renames the folder.
    accelerator.wait_for_everyone()
    final = None
    if accelerator.is_main_process:
        write_files(tmp_path)
        final = commit_checkpoint(tmp_path, output_dir, step)
    accelerator.wait_for_everyone()
    return final


def remove_partial_checkpoints(output_dir: str | os.PathLike) -> None:
    """Delete staged checkpoints, and replaced ones set aside, left by a run killed while saving."""
    out = Path(output_dir)
    if out.is_dir():
        for p in [*out.glob(".checkpoint-*.partial"), *out.glob(SET_ASIDE_PREFIX + "checkpoint-*")]:
            shutil.rmtree(p, ignore_errors=True)


def tracker_config(args) -> dict:
    """argparse namespace → values every tracker accepts (TensorBoard wants scalars/str)."""
    out = {}
    for k, v in vars(args).items():
        out[k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return out


def parse_int_list(text: str, name: str = "value") -> list[int]:
    try:
        return [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError as err:
        raise UserInputError(f"{name}: expected comma-separated integers, got {text!r}") from err


def parse_float_pair(text: str, name: str = "value") -> tuple[float, float]:
    try:
        parts = [float(v) for v in str(text).split(",")]
    except ValueError:
        parts = []
    if len(parts) != 2:
        raise UserInputError(f"{name}: expected two comma-separated numbers, got {text!r}")
    return parts[0], parts[1]


def check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UserInputError(f"{name}: {value!r} is not one of {', '.join(sorted(map(str, choices)))}")


def argument_parser(
    arguments_class, prog: str, description: str | None, groups: dict[str, tuple[str, ...]] | None = None
):
    """The command-line parser of a training function's arguments dataclass (transformers'
    ``HfArgumentParser``: every field is a flag, ``--a_b`` and ``--a-b`` alike). ``groups``
    (title → field names) sorts the flags into sections of ``--help``."""
    import argparse

    from transformers import HfArgumentParser

    # No abbreviations: a misspelt flag must be an error, never a silent prefix match.
    parser = HfArgumentParser(
        arguments_class,
        prog=prog,
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )
    if groups:
        actions = {a.dest: a for a in parser._actions}
        for title, names in groups.items():
            group = parser.add_argument_group(title)
            for name in names:
                action = actions[name]
                for container in parser._action_groups:
                    if action in container._group_actions and container is not group:
                        container._group_actions.remove(action)
                group._group_actions.append(action)
    return parser


def parse_arguments(parser, arguments_class, argv=None):
    """``argv`` → an ``arguments_class`` instance. A flag typo is argparse's usage error (exit
    code 2); a bad value raises :class:`UserInputError` from the dataclass's checks."""
    namespace = parser.parse_args(argv)
    return arguments_class(**vars(namespace))


def describe_cpu_threads(device) -> str | None:
    """A note on the CPU threads a job uses, or None on an accelerator. torch's default (one
    thread per physical core, or ``OMP_NUM_THREADS``) is right for a machine of one's own; on a
    shared one, several jobs at that default slow each other 5-10×."""
    if getattr(device, "type", str(device)) != "cpu":
        return None
    source = "OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS") else "torch's default, one per physical core"
    return (
        f"running on the CPU with {torch.get_num_threads()} threads ({source}); when several jobs share this "
        "machine, give each OMP_NUM_THREADS=1 (or run one at a time)"
    )


def long_run_warning(seconds_per_step: float, remaining_steps: int, device, what: str) -> str | None:
    """A warning when a CPU run will take more than an hour, with the estimate."""
    total = seconds_per_step * remaining_steps
    if getattr(device, "type", str(device)) != "cpu" or total < 3600:
        return None
    return (
        f"{what} will take about {total / 3600:.1f} h on this CPU ({seconds_per_step:.2f} s per step, {remaining_steps} steps "
        "to go): a GPU, a smaller --preset or --resolution, or fewer steps shorten it"
    )


def run_steps(args, accelerator, step, save, global_step: int, desc: str, extra_logs=None) -> int:
    """The pre-trainings' loop from ``global_step`` (0, or the step resumed from) to
    ``args.max_steps`` (or ``args.stop_after_steps``): ``step(global_step)`` runs one optimiser
    step and returns its loss; every ``args.logging_steps`` the tracker gets the mean loss and
    the speed since the last log (plus ``extra_logs()``); at each of ``args.save_at``,
    ``save(step, facts)`` with the recent loss and the seconds per step (timed from the second
    step: the first pays for warm-up). Returns the last step."""
    from collections import deque

    import numpy as np
    from tqdm.auto import tqdm

    resumed_at = global_step
    recent_losses = deque(maxlen=100)
    progress = tqdm(
        total=args.max_steps, initial=global_step, desc=desc, disable=not accelerator.is_local_main_process
    )
    if accelerator.is_main_process and (note := describe_cpu_threads(accelerator.device)):
        logging.getLogger(__name__).info(note)
    first_step_start = time.perf_counter()
    tick, tick_step, window_loss = time.perf_counter(), global_step, 0.0
    while global_step < args.max_steps:
        step_loss = step(global_step)
        global_step += 1
        if global_step == resumed_at + 1:
            timed_from = (time.perf_counter(), global_step)
        if global_step == resumed_at + 2 and accelerator.is_local_main_process:
            # The first step pays for warm-up; the second gives an honest estimate.
            seconds = (time.perf_counter() - first_step_start) / 2
            if warning := long_run_warning(seconds, args.max_steps - global_step, accelerator.device, desc):
                progress.write("warning: " + warning)
        recent_losses.append(step_loss)
        window_loss += step_loss
        progress.update(1)
        progress.set_postfix(loss=f"{step_loss:.4f}")
        if global_step % args.logging_steps == 0 or global_step == args.max_steps:
            now, steps = time.perf_counter(), global_step - tick_step
            logs = {"loss": window_loss / steps, "steps_per_s": steps / max(now - tick, 1e-9)}
            accelerator.log(dict(logs, **(extra_logs() if extra_logs else {})), step=global_step)
            tick, tick_step, window_loss = now, global_step, 0.0
        if global_step in args.save_at:
            timed = global_step - timed_from[1]
            per_step = (time.perf_counter() - timed_from[0]) / timed if timed > 0 else None
            facts = {"recent_loss": float(np.mean(recent_losses)), "recent_loss_steps": len(recent_losses)}
            save(global_step, dict(facts, seconds_per_step=per_step))
        if args.stop_after_steps and global_step >= args.stop_after_steps:
            break
    progress.close()
    return global_step


def run_accelerator(args, mixed_precision: str):
    """:func:`make_accelerator` for a training script's ``args``: its gradient accumulation, its
    tracker (``--report-to``; ``none``: no tracker) and its logs under ``OUT/logs``."""
    from accelerate.utils import ProjectConfiguration

    return make_accelerator(
        mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=None if args.report_to == "none" else args.report_to,
        project_config=ProjectConfiguration(
            project_dir=args.output_dir, logging_dir=os.path.join(args.output_dir, "logs")
        ),
    )


def load_resume_state(accelerator, args, resume) -> int:
    """Load ``resume`` (:func:`resolve_resume`'s ``(step, folder)``) into ``accelerator`` and
    return its step; 0 (and a note when one was asked for) when there is none."""
    log = logging.getLogger(__name__)
    if args.resume_from_checkpoint and resume is None:
        log.info("no checkpoint to resume from in %s; starting from scratch", args.output_dir)
    if resume is None:
        return 0
    step, path = resume
    accelerator.load_state(os.path.join(path, "state"))
    log.info("resumed from %s (step %d)", path, step)
    return step
