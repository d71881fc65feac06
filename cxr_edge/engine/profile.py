"""Optimization-profile sizing and chunk planning over the patch-batch dimension N.

Pure Python: the builder uses ``size_profile`` and the TensorRT backend uses ``plan_chunks``,
so both are unit-tested without TensorRT.
"""

from __future__ import annotations

from dataclasses import dataclass

from cxr_edge.errors import CxrEdgeError

#: DLA runs a fixed batch and cannot take more than this many patches at once.
DLA_MAX_BATCH = 4096
#: Default largest patch batch of an engine's optimization profile (one engine call): 32 shifted
#: copies of 64 patches, ~64 MiB of fp32 input.
DEFAULT_PROFILE_MAX_PATCHES = 2048


@dataclass(frozen=True)
class BatchProfile:
    """The one TensorRT optimization profile over N (patches per call); ``fixed`` when min == max."""

    min: int
    opt: int
    max: int

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def run_rows(self, rows: int) -> int:
        """Rows an engine call of ``rows`` patches runs: ``rows``, or the fixed batch
        (``min``, DLA) with a zero-padded tail."""
        return max(rows, self.min)

    def to_dict(self) -> dict[str, int]:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    @classmethod
    def from_dict(cls, raw: dict[str, int]) -> BatchProfile:
        return cls(min=int(raw["min"]), opt=int(raw["opt"]), max=int(raw["max"]))


def size_profile(max_patches: int, patches_per_image: int, dla: bool = False) -> BatchProfile:
    """Profile for runtime chunks of at most ``max_patches`` patches.

    ``max_patches`` is rounded down to whole shifted copies (multiples of ``patches_per_image``,
    64 for an 8x8 grid) because the tiler hands out whole copies. GPU: min 1 so a partial last
    chunk runs as is, opt = max = the chunk. DLA: fixed batch (min = opt = max <= 4096); the
    runtime pads the last chunk.
    """
    if patches_per_image < 1:
        raise CxrEdgeError(None, f"patches per image must be >= 1, got {patches_per_image}")
    if max_patches < patches_per_image:
        raise CxrEdgeError(
            None, f"--max-patches {max_patches} is smaller than one image's {patches_per_image} patches"
        )
    size = (max_patches // patches_per_image) * patches_per_image
    if dla:
        if size > DLA_MAX_BATCH:
            raise CxrEdgeError(
                None, f"--max-patches {max_patches} exceeds the DLA fixed-batch limit of {DLA_MAX_BATCH}"
            )
        return BatchProfile(min=size, opt=size, max=size)
    return BatchProfile(min=1, opt=size, max=size)


@dataclass(frozen=True)
class Chunk:
    """Rows ``[start, stop)`` of the patch batch, run as one engine call of ``run_rows`` rows.

    ``run_rows > stop - start`` only for a fixed-batch (DLA) profile, where the tail is zero padding.
    """

    start: int
    stop: int
    run_rows: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


def plan_chunks(total: int, profile: BatchProfile) -> list[Chunk]:
    """Split ``total`` patches into engine calls that respect ``profile``."""
    if total < 0:
        raise CxrEdgeError(None, f"patch count must be >= 0, got {total}")
    chunks = []
    for start in range(0, total, profile.max):
        stop = min(start + profile.max, total)
        chunks.append(Chunk(start=start, stop=stop, run_rows=profile.run_rows(stop - start)))
    return chunks
