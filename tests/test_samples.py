"""train/report/samples.py: the sample grid is laid out pixel for pixel as torchvision's make_grid."""
import math

import numpy as np
import pytest
import torch
from torchvision.utils import make_grid

from train.report.samples import PADDING, image_grid


@pytest.mark.parametrize("count, columns", [(1, None), (4, None), (5, None), (7, 3), (3, 8), (10, 5)])
def test_image_grid_matches_torchvisions_make_grid(count, columns):
    images = torch.rand(count, 3, 5, 7, generator=torch.Generator().manual_seed(count)) * 2 - 1
    pixels = images.add(1).mul(127.5).round().to(torch.uint8)
    expected = make_grid(pixels, nrow=columns or math.ceil(math.sqrt(count)), padding=PADDING, pad_value=0)
    if count == 1:  # make_grid hands a lone image back without its frame; the grid keeps it
        expected = torch.nn.functional.pad(expected, (PADDING,) * 4)
    np.testing.assert_array_equal(np.asarray(image_grid(images, columns)), expected.permute(1, 2, 0).numpy())
