"""accelerate_config.yaml and launch/accelerate/*.yaml: configs accelerate itself accepts."""
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import load_config_from_file
from accelerate.utils import DistributedType

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "path, precision",
    [
        ("accelerate_config.yaml", "no"),
        ("launch/accelerate/multi_gpu_bf16.yaml", "bf16"),
        ("launch/accelerate/multi_gpu_fp16.yaml", "fp16"),
        ("launch/accelerate/multi_node.yaml", "bf16"),
    ],
)
def test_accelerate_reads_the_shipped_configs(path, precision):
    config = load_config_from_file(str(ROOT / path))
    assert config.distributed_type == DistributedType.MULTI_GPU
    assert config.mixed_precision == precision
    assert not config.use_cpu
