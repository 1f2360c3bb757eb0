"""The project's one GIF writer: a whole animation at once, or one frame appended in place.

progress.gif gains a frame at every sample step. Rebuilding it from every PNG made step N cost O(N)
and the run O(N^2); `append_gif_frame` encodes only the new frame and writes its bytes over the old
trailer, so a sample step costs the same at step 1,000 and at step 100,000: append, don't redo.
Block layout: the GIF89a specification, https://www.w3.org/Graphics/GIF/spec-gif89a.txt
"""
import io
import os
import struct
from collections.abc import Sequence
from pathlib import Path

from PIL import Image

from train.common.atomic import atomic_write

SIGNATURES = (b"GIF87a", b"GIF89a")
END = b"\x00\x3b"  # the last block's terminator, then the trailer: how every complete GIF ends
DISPOSAL_KEEP = 1  # appended frames cover the whole canvas, so what lies beneath never shows


class GifDamaged(ValueError):
    """The file does not end as a complete GIF (a torn write): rebuild it from the frames with write_gif."""


def _centiseconds(duration_ms: int) -> int:
    # GIF delays are in centiseconds; both writers round alike (Pillow alone would truncate)
    return max(0, round(duration_ms / 10))


def write_gif(frames: Sequence[Image.Image], path: Path, duration_ms: int, loop: int = 0) -> None:
    """All `frames` as one animation, `duration_ms` each, played `loop` times (0: forever).

    Written beside `path` and renamed over it, so no reader sees half a file. Pillow merges identical
    neighbouring frames into one frame that lasts as long as they did together."""
    if not frames:
        raise ValueError("write_gif needs at least one frame")
    atomic_write(Path(path), lambda tmp: frames[0].save(
        tmp, format="GIF", save_all=True, append_images=list(frames[1:]), duration=_centiseconds(duration_ms) * 10, loop=loop,
    ))


def _after_sub_blocks(data: bytes, position: int) -> int:
    """The offset just past the data sub-blocks starting at `position` and their 0 terminator."""
    while data[position]:
        position += data[position] + 1
    return position + 1


def _frame_blocks(frame: Image.Image, duration_ms: int) -> bytes:
    """`frame` as the blocks of one GIF frame: our Graphic Control Extension, the image descriptor,
    a local colour table and the LZW data.

    Pillow encodes the frame alone (its quantisation, its LZW); the palette it puts in its global
    colour table becomes this frame's local one, as the file's global table belongs to frame 0.
    Pillow's own extensions are dropped: its GCE may carry a transparency index meant for a lone
    image, and a loop or comment extension belongs only at the start of a file."""
    buffer = io.BytesIO()
    frame.save(buffer, format="GIF")
    data = buffer.getvalue()
    screen_flags, position = data[10], 13
    global_table = b""
    if screen_flags & 0x80:
        position += 3 << ((screen_flags & 0x07) + 1)
        global_table = data[13:position]
    while data[position] == 0x21:
        position = _after_sub_blocks(data, position + 2)  # +2: introducer and label
    if data[position] != 0x2C:
        raise RuntimeError(f"Pillow wrote no image descriptor where expected (byte {position})")
    descriptor, body = bytearray(data[position : position + 10]), position + 10
    lzw_data = body + 1  # +1: the LZW minimum code size
    if descriptor[9] & 0x80:
        lzw_data += 3 << ((descriptor[9] & 0x07) + 1)
    elif global_table:
        descriptor[9] |= 0x80 | (screen_flags & 0x07)
        descriptor += global_table
    control = b"\x21\xf9\x04" + struct.pack("<BHBB", DISPOSAL_KEEP << 2, _centiseconds(duration_ms), 0, 0)
    return control + bytes(descriptor) + data[body : _after_sub_blocks(data, lzw_data)]


def append_gif_frame(path: Path, frame: Image.Image, duration_ms: int) -> None:
    """Add `frame`, shown for `duration_ms`, at the end of the GIF at `path`; a missing file becomes a
    one-frame GIF that loops forever (and so will the frames appended to it).

    Returns None: the frame count would cost reading the whole file, and the caller knows how many
    frames it has given. The earlier frames are never read or re-encoded; only the new frame's bytes
    and a new trailer are written. Raises ValueError if `frame` is not the size of the file's canvas,
    GifDamaged if the file does not end as a complete GIF; the file is left unchanged either way."""
    path = Path(path)
    try:
        file = open(path, "r+b")
    except FileNotFoundError:
        write_gif([frame], path, duration_ms, loop=0)
        return
    with file:
        head = file.read(13)  # signature and logical screen descriptor
        if len(head) < 13 or head[:6] not in SIGNATURES:
            raise GifDamaged(f"{path} does not start as a GIF; rebuild it with write_gif")
        file.seek(-len(END), os.SEEK_END)
        if file.read() != END:
            raise GifDamaged(f"{path} does not end with the GIF trailer (a torn write?); rebuild it with write_gif")
        canvas = struct.unpack("<HH", head[6:10])
        if frame.size != canvas:
            raise ValueError(
                f"frame is {frame.size[0]}x{frame.size[1]} but {path} is {canvas[0]}x{canvas[1]}; "
                "every frame of a GIF must be the size of its first"
            )
        blocks = _frame_blocks(frame, duration_ms)
        if head[:6] == b"GIF87a":  # graphic control extensions are a GIF89a feature
            file.seek(3)
            file.write(b"89a")
        file.seek(-1, os.SEEK_END)
        file.write(blocks + b"\x3b")
