"""A decoding process keeps the memory it frees, for its next image.

glibc's malloc hands a large freed block back to the kernel (blocks above its mmap threshold, and
the top of the heap beyond its trim threshold), and the next image's buffers then come from fresh
pages, each one faulted in and zeroed. A 1024-px JPEG decode frees and takes back about 9 MB an
image (the 4-MB RGBX picture, the planes): in a process started from a forkserver or spawned, whose
malloc has not yet raised its own thresholds, that was 2,272 page faults and 7.0-7.6 ms of CPU an
image, against 3.0-3.2 ms and none once the thresholds are fixed (this project's 2-core VM, torch's
Pillow; 83-130 faults and 0.1-0.4 ms at 256 px, none at 64). A process forked from one that had
already freed such blocks inherits raised thresholds, which is why a decode loop in the parent, or
workers forked from it, did not show the cost; a process's history should not decide it.

Only decoding processes call this: it keeps up to TRIM_THRESHOLD of freed memory each (their peak
is a few images' buffers), where a trainer's own heap is left to glibc's defaults.
"""
import ctypes

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20  # the largest glibc takes on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 64 << 20  # freed memory kept at the top of the heap: a few 1024-px images' buffers


def keep_freed_memory() -> bool:
    """Fixes this process's malloc thresholds so freed image buffers are reused; False where the C
    library has no glibc mallopt (macOS) or refuses the values (musl's is a stub)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
