"""Peak memory (RSS) of the inputs that used to blow it up (issue 23): images of extreme shape or
size in the data pipeline, and generate.py writing many samples to a .npy.

    python bench/peak_memory.py [--code DIR] [--resolution 64] [--npy-samples 1000 100000]

Each case runs in a fresh interpreter, which reports its own peak RSS and seconds. The peak is
VmHWM from /proc/self/status: ru_maxrss would count the parent's RSS at the fork as well (Linux
carries it over the exec), and this parent holds datasets and torch.

- data: an image folder of 64 ordinary 256-px JPEGs, alone or with one extreme image (a few
  hundred bytes to a few kilobytes on disk), two passes through the training stream (decoded in
  the process: --workers 0) at --resolution;
- generate: a 1-step --debug run (32 px), then generate.py --n N to a .npy, for each N: a peak
  that does not grow with N is memory bounded.

--code runs the cases against another checkout (the code before a change, say): its root goes
first on the children's PYTHONPATH. Figures are peak RSS in MB; times are printed, not judged.
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures import bilevel_png, declared_png

EXTREME = {
    "none": None,
    "tall 1x50000 PNG": lambda: bilevel_png(1, 50_000),
    "wide 50000x1 PNG": lambda: bilevel_png(50_000, 1),
    "strip 64x20000 PNG": lambda: bilevel_png(64, 20_000),
    "5700x5700 1-bit PNG": lambda: bilevel_png(5_700, 5_700),  # 32.5 Mpx: just under the cap, decoded
    "6000x6000 1-bit PNG": lambda: bilevel_png(6_000, 6_000),  # 36 Mpx: just over it
    "30000x30000 declared": lambda: declared_png(30_000, 30_000),
}

PEAK = "int(next(line for line in open('/proc/self/status') if line.startswith('VmHWM')).split()[1]) / 1024"

DATA_CHILD = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
from train.data import DataOptions, open_stream, parse_data_spec
folder, resolution, batches = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
options = DataOptions(parse_data_spec(folder), resolution=resolution, workers=0, hflip=False, shuffle_buffer=16)
stream = open_stream(options, batch_size=8, seed=0, rank=0, world_size=1)
start = time.perf_counter()
for _ in range(batches):
    next(stream)
print(json.dumps({"peak_mb": PEAK, "seconds": time.perf_counter() - start, "skipped": stream.counters()["data_skipped"]}))
""".replace("PEAK", PEAK)

GENERATE_CHILD = """
import json, sys, time
from train.generate import main
start = time.perf_counter()
code = main(["--run", sys.argv[1], "--n", sys.argv[2], "--output", sys.argv[3], "--device", "cpu"])
print(json.dumps({"peak_mb": PEAK, "seconds": time.perf_counter() - start, "code": code}))
""".replace("PEAK", PEAK)


def child(code: Path, program: str, *args: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-c", program, *args], cwd=code, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        return {"error": result.stderr.strip().splitlines()[-1]}
    return json.loads(result.stdout.strip().splitlines()[-1])


def ordinary_folder(folder: Path, images: int = 64) -> None:
    rng = np.random.default_rng(0)
    for i in range(images):
        coarse = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize((256, 256), Image.BICUBIC)
        buffer = io.BytesIO()
        coarse.save(buffer, format="JPEG", quality=90)
        (folder / f"{i:03d}.jpg").write_bytes(buffer.getvalue())


def data_cases(code: Path, work: Path, resolution: int) -> None:
    print(f"data: 64 ordinary 256-px JPEGs and one extreme image, 2 passes at --resolution {resolution}, --workers 0")
    for name, make in EXTREME.items():
        folder = work / name.replace(" ", "_")
        folder.mkdir()
        ordinary_folder(folder)
        if make is not None:
            (folder / "extreme.png").write_bytes(make())
        result = child(code, DATA_CHILD, str(folder), str(resolution), "16")
        print(f"  {name:24s} {json.dumps(result)}", flush=True)


def generate_cases(code: Path, work: Path, counts: list[int]) -> None:
    run = work / "run"
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(code / "train" / "wgangp.py"), "--debug", "--max-steps", "1", "--ckpt-every", "1",
                    "--out", str(run)], cwd=code, env=env, capture_output=True, check=True)
    for samples in counts:
        output = work / f"samples_{samples}.npy"
        result = child(code, GENERATE_CHILD, str(run), str(samples), str(output))
        size = output.stat().st_size / 1e6 if output.exists() else 0
        print(f"generate: --n {samples} to a .npy of {size:.0f} MB (32 px): {json.dumps(result)}", flush=True)
        output.unlink(missing_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=ROOT, help="the checkout whose code runs (default: this one)")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--npy-samples", type=int, nargs="+", default=[1_000, 100_000])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        data_cases(args.code.resolve(), Path(work), args.resolution)
        generate_cases(args.code.resolve(), Path(work), args.npy_samples)


if __name__ == "__main__":
    main()
