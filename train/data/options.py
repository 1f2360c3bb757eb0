"""How a run reads its images, decided once: the training stream, FID's reference stream and the
FID cache key all take this one value."""
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from train.data.specs import DataSpec


@dataclass(frozen=True)
class DataOptions:
    spec: DataSpec  # the --data value, parsed (for a folder: listed) once
    resolution: int
    split: str = "train"
    image_column: str | None = None
    celeba_crop: int = 0
    hflip: bool = True
    shuffle_buffer: int = 1000
    workers: int = 0  # decoding worker processes per rank (capped at the rank's shards)
    background: tuple[int, int, int] = (255, 255, 255)  # what transparent pixels are composited onto
    # Where whole batches of JPEGs are decoded (train/data/device_decode.py), the workers only reading
    # bytes; None: each image in the workers with Pillow (decode.py). --decode-device cuda: "cuda".
    batch_decode_device: str | None = None

    def reference(self) -> "DataOptions":
        """The same images as seen by an evaluation: unflipped, decoded in the calling process by
        decode_image, whose pixels FID's cached reference statistics hold."""
        return dataclasses.replace(self, hflip=False, workers=0, batch_decode_device=None)

    def identity(self) -> dict[str, str]:
        """What decides which real images, decoded how, this reads: a cache key's part, in strings."""
        spec = self.spec
        return {
            "data": str(Path(spec.name).resolve()) if spec.kind == "folder" else
                    f"prepared:{Path(spec.name).resolve()}" if spec.kind == "prepared" else str(spec),
            "split": self.split,
            "image_column": self.image_column or "",
            "resolution": str(self.resolution),
            "celeba_crop": str(self.celeba_crop),
            "background": ",".join(map(str, self.background)),
        }
