"""The small data file the GPU check needs on a lent machine: the first 512 pairs of HH-RLHF's
harmless-base test split, in device_data/ (git-ignored).

The public files of ../shared/data are not part of the project and are never committed, and a lent GPU
machine gets only the working tree and the ignored paths a call carries. So this script copies the slice
from ../shared/data into device_data/, and the device call carries that folder beside wheels/
(docs/benchmarks.md). `hh_slice()` makes it on first use wherever ../shared/data is (the CPU dry run,
CI), and finds it carried on a lent machine.

    python scripts/device_data.py            # writes device_data/hh_rlhf_harmless_base_test_512.jsonl.gz
    python scripts/device_data.py --smoke    # the same into a scratch folder

Prints the file, its pairs and bytes; the last line is the same as JSON.
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
from pathlib import Path

from noisypref.benchmark.storage import atomic_path

REPO = Path(__file__).resolve().parent.parent
SHARED_HH = REPO.parent / "shared" / "data" / "hh_rlhf" / "harmless-base-test.jsonl.gz"
DEVICE_DATA = REPO / "device_data"
SLICE_PAIRS = 512
HH_SLICE = DEVICE_DATA / f"hh_rlhf_harmless_base_test_{SLICE_PAIRS}.jsonl.gz"


def hh_slice(folder: Path = DEVICE_DATA) -> Path:
    """The slice in ``folder`` (``HH_SLICE`` by default), written from ``SHARED_HH`` (its first
    ``SLICE_PAIRS`` lines, unchanged) when it is not there yet."""
    path = folder / HH_SLICE.name
    if path.is_file():
        return path
    if not SHARED_HH.is_file():
        raise FileNotFoundError(
            f"{path} is missing and {SHARED_HH} is not there to make it from: run "
            "`python scripts/device_data.py` where ../shared/data is, and carry device_data/ with the call"
        )
    with gzip.open(SHARED_HH, "rt", encoding="utf-8") as source:
        lines = [line for _, line in zip(range(SLICE_PAIRS), source)]
    with atomic_path(path) as partial, open(partial, "wb") as raw:
        with gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0) as packed:  # no name, no time:
            packed.write("".join(lines).encode("utf-8"))  # the same bytes every time
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="write the slice into a scratch folder instead")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        path = hh_slice(Path(scratch) if args.smoke else DEVICE_DATA)
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            pairs = sum(1 for _ in lines)
        summary = {"file": str(path), "pairs": pairs, "bytes": path.stat().st_size}
    print(f"{summary['file']}: {pairs} pairs, {summary['bytes']:,} bytes (carry device_data/ with the device call)")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
