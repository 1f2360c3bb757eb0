"""What a run reports, at its cadences and on every rank in step: the metrics line (--log-every),
the samples and their collapse check (--sample-every) and the evaluation (--fid-every: FID, or
Stacked MNIST's scores; train/run/evaluation.py), each also at the last step; and whether a collapse
alarm has sounded."""
import time

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from tqdm.auto import tqdm

from train.data import DataError, DataOptions, check_skipped
from train.data.generated import toy_modes
from train.gan.instance_noise import InstanceNoise
from train.report.reporter import Reporter
from train.run.batches import StepBatches
from train.run.config import TrainConfig
from train.run.ema import GeneratorEMA
from train.run.evaluation import Evaluation
from train.run.networks import fixed_noise, render_samples
from train.run.outcome import RunEnd, RunStatus
from train.run.state import TrainState


class RunReport:
    """The run's reports after each step; `collapsed` once a loss or sample alarm has sounded."""

    def __init__(self, config: TrainConfig, accelerator: Accelerator, reporter: Reporter, state: TrainState,
                 batches: StepBatches, noise: InstanceNoise, ema: GeneratorEMA, evaluation: Evaluation | None, progress: tqdm):
        self.config, self.accelerator, self.reporter, self.state = config, accelerator, reporter, state
        self.batches, self.noise, self.ema, self.evaluation, self.progress = batches, noise, ema, evaluation, progress
        self.eval_noise = fixed_noise(config.num_samples, config.latent_dim, config.seed)
        data: DataOptions = config.data_options
        self.modes, self.std = toy_modes(data.spec.name) if data.spec.is_points else (None, 0.0)
        self.collapsed = False
        self.window_start, self.window_steps = time.perf_counter(), 0

    def after_step(self, step: int) -> RunEnd | None:
        """Every report due at `step`; a RunEnd when too many rows could not be read."""
        config, last = self.config, step == self.config.max_steps
        self.window_steps += 1
        self.progress.update()
        end = self.metrics_line(step) if step % config.log_every == 0 or last else None
        if step % config.sample_every == 0 or last:
            self.samples(step)
        if self.evaluation is not None and (step % config.fid_every == 0 or last):
            scores = self.evaluation.scores(self.ema.generator, config.latent_dim)  # collective: every rank
            self.reporter.log({"step": step, **scores})
        return end

    def metrics_line(self, step: int) -> RunEnd | None:
        """The window's means and the run's counters as one metrics line, and the loss-collapse check."""
        config, device = self.config, self.accelerator.device
        means = self.state.window.means(self.accelerator)
        counters, end = self._data_counters(step)
        elapsed = time.perf_counter() - self.window_start
        real_per_step = config.batch_size * config.real_batches_per_step * self.accelerator.num_processes
        record = {
            "step": step,
            **means,
            "img_per_s": real_per_step * self.window_steps / elapsed,
            "data_wait_frac": self.batches.take_data_wait() / elapsed,
            "lr": config.lr,
            **({"instance_noise_std": self.noise.sigma(step)} if config.instance_noise else {}),
            "skipped_steps": self.state.skipped_steps,
            "world_size": self.accelerator.num_processes,
            **counters,
        }
        if device.type == "cuda":
            record["gpu_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30  # peak in this window
            torch.cuda.reset_peak_memory_stats(device)
        self.reporter.log(record)
        warnings = self.state.monitor.observe_losses(record)  # the same means, so the same verdict, on every rank
        self.reporter.alert(step, warnings)
        self.collapsed |= bool(warnings)
        if self.accelerator.is_main_process:
            self.progress.set_postfix(img_s=f"{record['img_per_s']:.0f}", d_loss=f"{means['d_loss']:.3f}", refresh=False)
        self.window_start, self.window_steps = time.perf_counter(), 0
        if step % config.log_every == 0:
            # A final, off-cadence line leaves the window open: a resumed run then logs the
            # same means at the next regular step as an uninterrupted one.
            self.state.window.reset()
        return end

    def _data_counters(self, step: int) -> tuple[dict[str, int], RunEnd | None]:
        """Rows read and skipped, summed over ranks: every rank takes the same decision on them."""
        counters = self.state.stream.counters()
        if not counters:
            return counters, None
        totals = self.accelerator.reduce(torch.tensor(list(counters.values()), device=self.accelerator.device), reduction="sum")
        counters = dict(zip(counters, totals.tolist()))
        try:
            check_skipped(self.config.data_options.spec, counters["data_read"], counters["data_skipped"])
        except DataError as error:  # the same totals, so the same verdict, on every rank
            return counters, RunEnd(RunStatus.DATA_FAILED, step, f"{error}; stopped with a checkpoint at step {step}")
        return counters, None

    def samples(self, step: int) -> None:
        """The EMA generator's samples and the sample-collapse check; before the checkpoint, so that
        the diversity seen here is part of the saved monitor."""
        sample_alarm = False
        if self.accelerator.is_main_process:
            samples = render_samples(self.ema.generator, self.eval_noise)
            self.reporter.samples(step, samples, self.batches.last_real, self.modes, self.std)
            warnings = self.state.monitor.observe_samples(step, samples)
            self.reporter.alert(step, warnings)
            sample_alarm = bool(warnings)
        if self.config.stop_on_collapse:  # the samples live on the main process: its verdict for all
            self.collapsed |= bool(broadcast(torch.tensor([int(sample_alarm)], device=self.accelerator.device)).item())
