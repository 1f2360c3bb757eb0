"""The training loop shared by every trainer: a run's life as named steps.

build (train.run.build, then the run's data, state and reports), restore (--resume), step
(train.run.phases), report (train.run.report), checkpoint, stop. It knows models only as callables
and objectives only through `critic_loss` / `generator_loss`.
"""
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable
from pathlib import Path

from accelerate import Accelerator
from tqdm.auto import tqdm

from train.common.failpoints import Failpoints
from train.data import BatchStream, open_stream
from train.gan.instance_noise import InstanceNoise
from train.report.metrics import StatWindow
from train.report.monitor import CollapseMonitor
from train.report.reporter import Reporter
from train.report.tracking import WandbRun, new_run_id, resolve_wandb_mode
from train.run.batches import StepBatches
from train.run.build import ObjectiveFactory, Training, build_training, make_accelerator
from train.run.checkpoint import (
    CheckpointLayout,
    CheckpointWriteError,
    checkpoint_step,
    checkpoint_to_resume,
    latest_checkpoint,
    load_checkpoint,
    remove_partial_checkpoints,
    save_checkpoint,
    set_aside_damaged,
)
from train.run.config import (
    TrainConfig,
    collapse_thresholds,
    collective_timeout_seconds,
    resuming,
    save_config,
    time_limit_seconds,
)
from train.run.evaluation import Evaluation, open_evaluation
from train.run.memory import batch_too_large, is_out_of_memory
from train.run.outcome import EXIT_STATUS_FILE, RunEnd, RunStatus
from train.run.peers import Peers
from train.run.phases import Phases
from train.run.poison import with_failpoints
from train.run.profiling import StepProfiler
from train.run.report import RunReport
from train.run.rollback import Rollback
from train.run.state import TrainState
from train.run.stop import GracefulStop
from train.run.threads import CoreShare, set_threads


@dataclasses.dataclass(frozen=True)
class Wandb:
    """How the run uses W&B, resolved before the Accelerator is made."""

    mode: str
    hint: str | None  # printed once the run has started, where the offline run can be found


@dataclasses.dataclass
class Run:
    """One run's parts on this rank, built once; what the loop's steps share."""

    config: TrainConfig
    out: Path
    training: Training
    state: TrainState
    batches: StepBatches
    phases: Phases
    noise: InstanceNoise
    evaluation: Evaluation | None  # at --fid-every: FID, or Stacked MNIST's scores
    reporter: Reporter
    rollback: Rollback
    stop: GracefulStop
    profiler: StepProfiler
    resumed: bool
    step_pause: float  # the step_pause failpoint's seconds (test-only)
    core_share: CoreShare | None  # None where --threads or OMP_NUM_THREADS fixed the thread count

    @property
    def accelerator(self) -> Accelerator:
        return self.training.accelerator


def train(config: TrainConfig, make_objective: ObjectiveFactory) -> RunEnd:
    """Train to --max-steps, or until a collapse alarm (--stop-on-collapse), a stop signal or
    --time-limit ends the run early with a checkpoint; RankLost when another rank stopped answering."""
    failpoints = Failpoints.from_environment()  # test-only fault injection, read as the run starts
    wandb = Wandb(*resolve_wandb_mode(config.wandb_mode))
    accelerator = make_accelerator(config, log_with=WandbRun.log_with(wandb.mode))
    peers = Peers.join(accelerator, collective_timeout_seconds(config))
    # A signal during start-up stops the run after its first step; one before the handlers were in
    # (the entry script caught it) ends it before its set-up. A rank that stops answering: RankLost
    # on the ranks left (train/run/peers.py).
    with GracefulStop(accelerator, time_limit_seconds(config), collective_timeout_seconds(config)) as stop, peers.watching():
        if (reason := stop.asked_before_set_up()) is not None:
            end = stopped_before_set_up(config, accelerator, reason)
        else:
            end = _train(config, make_objective, accelerator, stop, wandb, failpoints)
    peers.leave_together()
    return end


def _train(config: TrainConfig, make_objective: ObjectiveFactory, accelerator: Accelerator, stop: GracefulStop,
           wandb: Wandb, failpoints: Failpoints) -> RunEnd:
    """The run's life: build, restore, then step, report and checkpoint until it stops."""
    training = build_training(config, accelerator, make_objective)
    stream = open_stream(config.data_options, batch_size=config.batch_size, seed=config.seed,
                         rank=accelerator.process_index, world_size=accelerator.num_processes,
                         pin_memory=accelerator.device.type == "cuda", batches_in_hand=config.real_batches_per_step)
    threads = set_threads(config.threads, stream.workers)
    accelerator.print(threads.line())
    profiler = StepProfiler(config.profile, Path(config.out), accelerator.process_index,
                            print_table=accelerator.is_main_process)
    # Decoding workers are shut down on every way out, an error included, or the process cannot exit.
    with contextlib.closing(stream), profiler:
        run = build_run(config, training, stream, stop, profiler, wandb, failpoints, CoreShare.watching(threads, above_the_bar(accelerator)))
        if run.resumed and (finished := restore(run)) is not None:
            del run, training
            release(accelerator)
            return finished
        run.batches.read_first(stop.any_rank)
        start_outputs(run, wandb)
        end = run_steps(run)
        run.reporter.finish(run.state.step, resumable=end.status is RunStatus.STOPPED)
        del run, training
        release(accelerator)
        return end


def above_the_bar(accelerator: Accelerator) -> Callable[[str], None]:
    """Print a line from the main process during the steps, on a line of its own above the progress bar."""
    return lambda line: tqdm.write(line) if accelerator.is_main_process else None


def stopped_before_set_up(config: TrainConfig, accelerator: Accelerator, reason: str) -> RunEnd:
    """The end of a run asked to stop in its first seconds: nothing written to --out, so a new run
    holds no half-made outputs and a resumed one's newest checkpoint stays its newest (the step the
    end names); the resumable exit tells a launcher to start it again."""
    newest = latest_checkpoint(Path(config.out)) if resuming(config) else None
    step = checkpoint_step(newest) if newest else 0
    accelerator.print(f"stopped before the set-up: {reason} came while the run was starting; nothing written")
    release(accelerator)
    return RunEnd(RunStatus.STOPPED, step, f"{reason} while starting")


def build_run(config: TrainConfig, training: Training, stream: BatchStream, stop: GracefulStop,
              profiler: StepProfiler, wandb: Wandb, failpoints: Failpoints, core_share: CoreShare | None) -> Run:
    """Around what the rank trains: the evaluation (FID, or Stacked MNIST's scores), the state a checkpoint holds, the step's
    batches, the instance noise, the phases (poisoned where a non-finite failpoint is set) and
    the divergence rollback."""
    accelerator, out = training.accelerator, Path(config.out)
    reporter = Reporter(accelerator, out, wandb_enabled=wandb.mode != "disabled")
    evaluation = open_evaluation(config, accelerator)
    state = TrainState(latent_rng=training.latent_rng, stream=stream, window=StatWindow(), objective=training.objective,
                       monitor=CollapseMonitor(collapse_thresholds(config), critic_key=config.collapse_critic_key),
                       run_id=new_run_id(), world_size=accelerator.num_processes)
    batches = StepBatches(stream, config.data_options.spec, accelerator.device, config.real_batches_per_step)
    noise = InstanceNoise(config.instance_noise, config.instance_noise_decay, config.instance_noise_steps,
                          config.instance_noise_real_only)
    updates = with_failpoints(training.updates, failpoints, lambda: state.step, grads_in_engine=bool(config.deepspeed))
    phases = training.phases(batches.next_real, state.window.add, updates=updates,
                             perturb=lambda samples, kind: noise(samples, kind, state.step, training.latent_rng))
    rollback = Rollback(accelerator, out, training.ema, reporter, config.nonfinite_patience, config.max_rollbacks)
    return Run(config, out, training, state, batches, phases, noise, evaluation, reporter, rollback, stop, profiler,
               resuming(config), failpoints.seconds("step_pause"), core_share)


def restore(run: Run) -> RunEnd | None:
    """The newest whole checkpoint into the run; a RunEnd when it had already reached --max-steps."""
    accelerator, state = run.accelerator, run.state
    run.training.ema.load_state_dict(load_checkpoint(accelerator, checkpoint_to_resume(accelerator, run.out), state))
    if state.step >= run.config.max_steps:  # a requeue or a rerun after the last step: nothing to do
        accelerator.print(f"the run in {run.out} already finished at step {state.step}; raise --max-steps to go on")
        return RunEnd(RunStatus.FINISHED, state.step, "already finished")
    accelerator.print(f"resumed from step {state.step}")
    if not state.restored_streams:
        accelerator.print(
            f"the checkpoint was made by another number of processes: the weights, optimizers and step"
            f" continue; the data is split anew over {accelerator.num_processes} process{'es' if accelerator.num_processes > 1 else ''}"
            " and each share read from its start"
        )
    return None


def start_outputs(run: Run, wandb: Wandb) -> None:
    """The first writes to --out, once every check has passed and the data has proved readable (a
    failed start leaves --out as it was): checkpoints tidied, config.json, metrics, W&B."""
    config, accelerator = run.config, run.accelerator
    if accelerator.is_main_process:
        remove_partial_checkpoints(run.out)
        set_aside_damaged(run.out, CheckpointLayout.of(accelerator))
        (run.out / EXIT_STATUS_FILE).unlink(missing_ok=True)  # a launcher must never read the previous run's ending
        save_config(config, run.out)
    run.reporter.start(
        resume_step=run.state.step if run.resumed else None,
        run_id=run.state.run_id,
        wandb_options=dict(
            project=config.wandb_project,
            config=dataclasses.asdict(config),
            mode=wandb.mode,
            entity=config.wandb_entity,
            name=config.wandb_name,
            tags=config.wandb_tags,
        ),
    )
    if wandb.hint:
        accelerator.print(wandb.hint.format(dir=run.out))


def run_steps(run: Run) -> RunEnd:
    """The steps after the restored one, up to --max-steps or the first reason to stop."""
    config, state = run.config, run.state
    # Closed on every way out: an error's line goes below the bar, not above it.
    with tqdm(total=config.max_steps, initial=state.step, unit="step", disable=not run.accelerator.is_main_process) as progress:
        report = RunReport(config, run.accelerator, run.reporter, state, run.batches, run.noise, run.training.ema, run.evaluation, progress)
        end, session_start = None, state.step
        for step in range(state.step + 1, config.max_steps + 1):
            if (end := data_failure(run, session_start)) is not None:
                break
            end = adversarial_step(run, step, first_steps=step <= session_start + config.ckpt_every)
            run.profiler.step()
            if run.core_share is not None:
                run.core_share.after_step()
            if run.step_pause and not run.resumed:  # test-only: a first start outlasts a signal's timer
                time.sleep(run.step_pause)
            end = report.after_step(step) or end
            end = stop_sources(run, step, end, report.collapsed)
            if (end := checkpoint(run, step, end, progress)) is not None:
                break
    return end or RunEnd(RunStatus.FINISHED, config.max_steps)


def data_failure(run: Run, session_start: int) -> RunEnd | None:
    """Draw this step's batches; should the reader fail on any rank, the end of the run, with a
    checkpoint of the previous step where this session has made one to save."""
    failure = run.batches.fill()
    if not run.stop.any_rank(failure is not None):  # collective: every rank, every step
        return None
    step = run.state.step
    end = RunEnd(RunStatus.DATA_FAILED, step, failure or "reading the data failed on another rank")
    if step > session_start:
        try:
            save(run)
            end.reason += f"; stopped with a checkpoint at step {step}: fix the data, then --resume"
        except CheckpointWriteError as error:
            end.step = error.kept_step  # exit_status.json names the step a resume continues from
            end.reason += f"; and the checkpoint at step {step} failed too: {error}"
    else:
        end.reason += "; fix the data, then " + ("--resume" if run.resumed else "start again")
    return end


def adversarial_step(run: Run, step: int, first_steps: bool = False) -> RunEnd | None:
    """One step of the phases, the EMA after a generator update, and the divergence check. Out of
    memory in the `first_steps` (this session's first --ckpt-every steps): a batch too large for
    the device, said in one line."""
    state, training = run.state, run.training
    state.step = step
    try:
        result = run.phases.step()
    except RuntimeError as error:
        if first_steps and is_out_of_memory(error):
            raise batch_too_large(run.config, step, training.accelerator.device, error) from None
        raise
    if training.ada is not None:
        training.ada.after_step(step)  # collective every few steps: every rank's p moves alike
    state.skipped_steps += result.skipped_updates
    if result.generator_updated:
        training.ema.update(training.generator_module)
    state.nonfinite_streak = state.nonfinite_streak + 1 if result.skipped_updates else 0
    return run.rollback.after_step(state, step)


def stop_sources(run: Run, step: int, end: RunEnd | None, collapsed: bool) -> RunEnd | None:
    """Why the run ends after this step, first reason first: an end already decided (divergence, too
    many unreadable rows), a collapse alarm under --stop-on-collapse, a stop signal or --time-limit
    (not at the last step, which ends the run anyway)."""
    stop_reason = run.stop.agreed()  # collective: every rank, every step
    if end is not None:
        return end
    if run.config.stop_on_collapse and collapsed:
        return RunEnd(RunStatus.COLLAPSED, step, "collapse alarm (--stop-on-collapse)")
    if stop_reason and step != run.config.max_steps:
        return RunEnd(RunStatus.STOPPED, step, stop_reason)
    return None


def checkpoint(run: Run, step: int, end: RunEnd | None, progress: tqdm) -> RunEnd | None:
    """A checkpoint every --ckpt-every steps, at the last and before any early end; a checkpoint
    that cannot be written (a full disk, say) stops the run, the checkpoint before it whole."""
    if step % run.config.ckpt_every and step != run.config.max_steps and end is None:
        return None
    try:
        save(run)
    except CheckpointWriteError as error:
        progress.close()  # the line goes below the progress bar, not after it
        run.accelerator.print(f"error: {error}", file=sys.stderr)
        return RunEnd(RunStatus.STOPPED, error.kept_step, str(error))  # the step a resume continues from
    if end is not None:
        run.accelerator.print(f"stopped at step {step}: {end.reason}; checkpoint saved")
    return end


def save(run: Run) -> None:
    """Collective: this rank's part of the checkpoint at the run's current step."""
    save_checkpoint(run.accelerator, run.out, run.state, run.training.ema.state_dict(), run.config.keep_checkpoints)


def release(accelerator: Accelerator) -> None:
    # The DDP-wrapped models go before the process group (the caller drops its own references
    # first): otherwise gloo can abort at exit.
    accelerator.free_memory()
    accelerator.end_training()
