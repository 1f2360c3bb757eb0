"""What the Kaggle and Colab notebooks run: find or restore the run, pick processes and precision
from the GPUs, take the W&B key from the platform's secrets, then run the trainer with --time-limit
and --resume auto: itself for one process, through `accelerate launch` for several or DeepSpeed.
The notebooks only set parameters and call `kaggle_session` or `colab_session`.
"""
import json
import os
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from launch.prepare_once import prepared_data
from train.run.checkpoint import checkpoint_step, latest_checkpoint
from train.run.outcome import EXIT_STATUS_FILE, RunStatus

ROOT = Path(__file__).resolve().parents[1]
TRAINERS = ("wgangp", "lightweight_gan", "dcgan")
KAGGLE_INPUT, KAGGLE_WORKING = Path("/kaggle/input"), Path("/kaggle/working")
COLAB_DRIVE = Path("/content/drive/MyDrive")


class SessionError(ValueError):
    """A bad notebook parameter; the message names it and the fix."""


@dataclass
class Session:
    trainer: str
    out: Path
    processes: int
    precision: str  # "no" on the CPU
    time_limit: str | None
    flags: list[str] = field(default_factory=list)
    restored_from: Path | None = None
    deepspeed: int | None = None  # ZeRO stage 1 or 2 (README, "DeepSpeed"); None: DDP
    prepare_root: Path | None = None  # where a streamed source is prepared once (launch/prepare_once.py); None: never
    inputs: Path | None = None  # a previous session's attached output (Kaggle), to reuse its preparation
    prepare_workers: int | None = None  # decoding processes; None: one per CPU

    def command(self) -> list[str]:
        script = str(ROOT / "train" / f"{self.trainer}.py")
        run = ["--out", str(self.out), "--resume", "auto"] + (["--time-limit", self.time_limit] if self.time_limit else [])
        if self.processes == 1 and not self.deepspeed:
            # One process needs no launcher (README, Launching): the trainer's flag sets the precision,
            # one interpreter start less, and a stop at the time limit (exit 75) is not reported as
            # accelerate launch's CalledProcessError traceback.
            return [sys.executable, script, "--mixed-precision", self.precision, *run, *self.flags]
        launch = ["accelerate", "launch"]
        if self.deepspeed:
            # Never --cpu: it drops DeepSpeed; the config runs on the CPU too where there is no GPU.
            config = ROOT / "launch" / "accelerate" / f"deepspeed_zero{self.deepspeed}.yaml"
            launch += ["--config_file", str(config), "--num_processes", str(self.processes), "--mixed_precision", self.precision]
        elif self.precision == "no":
            launch += ["--cpu", "--mixed_precision", "no", "--num_processes", str(self.processes)]
        else:
            config = ROOT / "launch" / "accelerate" / f"multi_gpu_{self.precision}.yaml"
            launch += ["--config_file", str(config), "--num_processes", str(self.processes)]
        return [*launch, script, *run, *self.flags]


def gpu_setup(requested_processes: int | None = None) -> tuple[int, str]:
    """(processes, mixed precision): one process per GPU; bf16 where the GPU has it natively (A100,
    L4, H100: compute capability 8 and up), fp16 on a T4 or V100; one CPU process without a GPU."""
    import torch

    gpus = torch.cuda.device_count()
    if gpus == 0:
        return requested_processes or 1, "no"
    if requested_processes is not None and requested_processes > gpus:
        raise SessionError(f"processes={requested_processes}: this machine has {gpus} GPUs; use {gpus} or fewer")
    major, _ = torch.cuda.get_device_capability(0)
    return requested_processes or gpus, "bf16" if major >= 8 else "fp16"


def use_wandb_secret(read_secret) -> str:
    """Put the W&B key from the platform's secrets into this process's environment (never into a
    file or the command); returns the W&B mode the run will use."""
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        key = read_secret("WANDB_API_KEY")
    except Exception:  # no secret attached, or not on that platform
        key = None
    if key:
        os.environ["WANDB_API_KEY"] = key
        return "online"
    os.environ.setdefault("WANDB_MODE", "offline")
    print("W&B: no WANDB_API_KEY secret, so the run logs offline; `wandb sync` its wandb/ folder later")
    return "offline"


def has_checkpoint(run: Path) -> bool:
    return latest_checkpoint(run) is not None


def find_previous_run(inputs: Path, name: str) -> Path | None:
    """The newest run called `name` with a checkpoint among a previous session's attached outputs."""
    if not inputs.is_dir():
        return None
    runs = [p.parent for p in inputs.glob(f"**/{name}/config.json") if has_checkpoint(p.parent)]
    return max(runs, key=lambda run: checkpoint_step(latest_checkpoint(run)), default=None)


def check_trainer(trainer: str, deepspeed: int | None = None) -> None:
    if trainer not in TRAINERS:
        raise SessionError(f"trainer={trainer!r}: use one of {', '.join(TRAINERS)}")
    if deepspeed not in (None, 1, 2):
        raise SessionError(f"deepspeed={deepspeed!r}: use 1 or 2 (ZeRO stage), or None for DDP")


def kaggle_session(
    trainer: str = "wgangp",
    run_name: str = "run",
    flags: tuple[str, ...] = (),
    time_limit: str | None = "11h30m",
    processes: int | None = None,
    inputs: Path = KAGGLE_INPUT,
    working: Path = KAGGLE_WORKING,
    deepspeed: int | None = None,
    prepare: bool = True,
) -> Session:
    """A Kaggle session: both T4s with fp16, the run in /kaggle/working/<run_name>, and, when a
    previous session's output is attached as input, that run copied back to continue it.
    `deepspeed`: ZeRO stage 1 or 2 for both networks (off by default: DDP). `prepare`: a streamed
    source is decoded once into /kaggle/working/prepared and reused by later sessions."""
    check_trainer(trainer, deepspeed)
    out = Path(working) / run_name
    restored = None
    if not has_checkpoint(out):
        restored = find_previous_run(Path(inputs), run_name)
        if restored is not None:
            shutil.copytree(restored, out, dirs_exist_ok=True)  # inputs are read-only
            print(f"continuing the run from {restored} (attached input) in {out}")
    try:
        from kaggle_secrets import UserSecretsClient  # only on Kaggle

        use_wandb_secret(UserSecretsClient().get_secret)
    except ImportError:
        use_wandb_secret(lambda name: None)
    count, precision = gpu_setup(processes)
    return Session(trainer, out, count, precision, time_limit, list(flags), restored, deepspeed,
                   prepare_root=Path(working) if prepare else None, inputs=Path(inputs))


def colab_session(
    trainer: str = "wgangp",
    run_name: str = "run",
    flags: tuple[str, ...] = (),
    time_limit: str | None = "11h30m",
    drive: Path = COLAB_DRIVE,
    fallback: Path = Path("/content/facegan"),
    deepspeed: int | None = None,
    prepare: bool = True,
) -> Session:
    """A Colab session: one GPU, fp16 on a T4 and bf16 on an A100 or L4, the run on Google Drive
    when it is mounted (so a disconnect loses nothing), resumed from there on the next session.
    `deepspeed`: ZeRO stage 1 or 2 (off by default: DDP). `prepare`: a streamed source is decoded
    once into the same folder's prepared/ and reused by later sessions."""
    check_trainer(trainer, deepspeed)
    if Path(drive).is_dir():
        out = Path(drive) / "facegan" / run_name
    else:
        out = Path(fallback) / run_name
        print(f"Google Drive is not mounted: the run goes to {out}, which a disconnect loses")
    try:
        from google.colab import userdata  # only on Colab

        use_wandb_secret(userdata.get)
    except ImportError:
        use_wandb_secret(lambda name: None)
    _, precision = gpu_setup(1)
    return Session(trainer, out, 1, precision, time_limit, list(flags), deepspeed=deepspeed,
                   prepare_root=out.parent if prepare else None)


def run(session: Session, dry_run: bool = False) -> int:
    """Prepare the data once (not in a dry run), print the command, run it with its output streamed
    into the notebook, and say how it ended."""
    if session.prepare_root is not None and not dry_run:
        from train.data.specs import DataSpecError

        try:
            session.flags = prepared_data(session.trainer, session.flags, session.out, session.prepare_root, session.inputs,
                                          session.prepare_workers)
        except DataSpecError as error:  # the source cannot be read (offline hub, no such folder): said as the trainer says it
            print(f"error: {error}")
            return 2
    command = session.command()
    print(shlex.join(command), flush=True)
    if dry_run:
        return 0
    session.out.mkdir(parents=True, exist_ok=True)
    status_file = session.out / EXIT_STATUS_FILE
    status_file.unlink(missing_ok=True)  # a previous session's, which must not speak for this one
    # A progress bar redrawn ten times a second would fill the notebook: once a minute is enough.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "60"}
    with subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            sys.stdout.write(line)
        launcher_code = process.wait()
    # accelerate launch turns the trainer's own exit code into 1; the run leaves it in exit_status.json.
    code = json.loads(status_file.read_text())["exit_code"] if status_file.exists() else launcher_code
    if code == 0:
        print(f"finished: {session.out}")
    elif code == RunStatus.STOPPED.exit_code:
        print(f"stopped early with a checkpoint in {session.out}: run this notebook again to continue"
              " (on Kaggle, attach this session's output as an input first)")
    else:
        print(f"the run failed with exit code {code}; its last lines are above")
    return code
