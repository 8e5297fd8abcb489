"""`noisypref noise`: flip labels of a preference dataset and write the noisy data and flip record."""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from noisypref.cli import StoreOnce, UserError, make_output_folder

COMMAND = "noise"
HELP = "inject label flips into a preference dataset"  # the line of `noisypref --help`
NOISY_DATA_STEM = "noisy"
FLIP_TABLE_NAME = "flips.csv"
FLIP_SUMMARY_NAME = "flips.json"
LAYOUT_FORMATS = ("trl", "same")
FILE_TYPES = ("jsonl", "parquet")


class FormatOnce(StoreOnce):
    """--format, given once; a second --format naming a file type is most likely meant as --file-type."""

    def refusal(self, option_string: str, first: object, second: object) -> str:
        text = super().refusal(option_string, first, second)
        file_type = next((value for value in (second, first) if value in FILE_TYPES), None)
        if file_type is not None:
            layout = next((value for value in (first, second) if value in LAYOUT_FORMATS), "trl")
            text += f"; {file_type} is a file type: give --format {layout} --file-type {file_type}"
        return text


def register(subparsers: argparse._SubParsersAction) -> None:
    from noisypref.benchmark.config.sections import MAX_SEED
    from noisypref.noise_injection import NOISE_MODELS

    parser = subparsers.add_parser(
        COMMAND,
        help=HELP,
        description=(
            "Flip chosen/rejected on a controlled share of the pairs of a preference dataset and write "
            f"OUT/{NOISY_DATA_STEM}.jsonl (or .parquet), OUT/{FLIP_TABLE_NAME} (pair_id, is_flipped, "
            f"flip_probability) and OUT/{FLIP_SUMMARY_NAME} (model, options, seed, target and realised rate). "
            "The noisy data can be trained with any tool; the flip record is for evaluation only. "
            "--format trl (the default) writes TRL's preference format: prompt / chosen / rejected, plain "
            "strings or message lists; --format same keeps the input's own layout (ShareGPT stays ShareGPT, "
            "HH-RLHF transcripts stay transcripts), its rows in the input's order with the flipped ones' "
            "chosen and rejected swapped. docs/data.md describes every layout."
        ),
    )
    parser.add_argument(
        "--list", action="store_true", help="list the noise models with their options and exit"
    )
    parser.add_argument("--data", action=StoreOnce, help="a local json / jsonl / jsonl.gz / parquet file, or a hub dataset id")
    parser.add_argument("--split", action=StoreOnce, help="hub split to load (needed when the hub dataset has several)")
    parser.add_argument(
        "--data-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="option for datasets.load_dataset, e.g. data_dir=harmless-base (repeatable; hub ids only)",
    )
    parser.add_argument("--model", action=StoreOnce, help=f"noise model: {', '.join(sorted(NOISE_MODELS))}")
    parser.add_argument("--rate", type=float, action=StoreOnce, help="target flip rate in [0, 1]")
    parser.add_argument(
        "--seed", type=int, default=0, action=StoreOnce, help=f"seed of the keyed draws, 0 to {MAX_SEED} (default 0)"
    )
    parser.add_argument(
        "--option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="noise-model option, VALUE read as JSON where it parses (mode=bernoulli, accuracy=[0.9,0.8,0.7])",
    )
    parser.add_argument("--out", type=Path, action=StoreOnce, help="output folder (created if missing)")
    parser.add_argument(
        "--force",
        action="store_true",
        help="overwrite the noisy data and flip record of an earlier run in --out",
    )
    parser.add_argument(
        "--format",
        action=FormatOnce,
        choices=LAYOUT_FORMATS + FILE_TYPES,
        default="trl",
        help="layout of the noisy data: trl (TRL's preference format prompt/chosen/rejected; the default) "
        "or same (the input's own layout). jsonl and parquet, 0.1's values of this flag, still choose the "
        "file type (as --file-type does) with the trl layout",
    )
    parser.add_argument(
        "--file-type", choices=FILE_TYPES, action=StoreOnce, help="file type of the noisy data (default jsonl)"
    )
    parser.set_defaults(func=run_noise)


def run_noise(args: argparse.Namespace) -> int:
    from noisypref.benchmark.config.sections import seed_check
    from noisypref.checks import Invalid
    from noisypref.noise_injection import get_noise_model

    if args.list:
        print(describe_noise_models())
        return 0
    missing = [f"--{name}" for name in ("data", "model", "rate", "out") if getattr(args, name) is None]
    if missing:
        raise ValueError(f"missing {', '.join(missing)} (or use --list to see the noise models)")
    # Check the flags before the (possibly slow) load: what fails after it is about the data.
    try:
        noise_model = get_noise_model(args.model)
    except ValueError as error:
        raise UserError(f"--model {args.model!r}: {error}") from None
    try:
        noise_model.make_options(parse_key_values(args.option, "--option"))
    except ValueError as error:
        raise UserError(f"--option: {error}") from None
    if not 0.0 <= args.rate <= 1.0:
        raise UserError(f"--rate: flip rate {args.rate} is not allowed; it must be a number in [0, 1]")
    try:
        seed_check(args.seed)
    except Invalid as error:
        raise UserError(
            f"--seed {args.seed} is not allowed: expected {error.expected}, as in study files"
        ) from None
    if args.split is not None and Path(args.data).is_file():
        raise UserError(
            f"--split {args.split!r}: {args.data} is a local file, which holds one split; "
            "--split chooses the split of a hub dataset only (drop it)"
        )
    if args.format in FILE_TYPES and args.file_type not in (None, args.format):
        raise UserError(
            f"--format {args.format} and --file-type {args.file_type} name two file types; give --file-type "
            f"{args.file_type} alone (with --format trl or same for the layout)"
        )
    check_earlier_output(args.out, args.force)
    existed = args.out.exists()
    make_output_folder(args.out, "the output folder (--out)")
    written: list[Path] = []
    try:
        return write_noisy_data(args, written)
    except BaseException:
        # a failed command leaves --out as it found it: no empty folder, no half of the output
        for path in written:
            path.unlink(missing_ok=True)
        if not existed:
            shutil.rmtree(args.out, ignore_errors=True)
        raise


def write_noisy_data(args: argparse.Namespace, written: list[Path]) -> int:
    """Load, inject and write the noisy data, the flip table and summary (each path added to
    ``written`` before it is written)."""
    from noisypref.benchmark.data.loaders import (
        load_preferences,
        source_records,
        swap_record_labels,
        write_preferences,
        write_records,
    )
    from noisypref.noise_injection import inject
    from noisypref.noise_injection.base import realised_rate_warning

    dataset = load_preferences(args.data, args.split, **parse_key_values(args.data_option, "--data-option"))
    try:
        noisy, record = inject(
            dataset, args.model, args.rate, args.seed, **parse_key_values(args.option, "--option")
        )
    except ValueError as error:
        raise UserError(f"{args.data}: {error}") from None
    layout_format = args.format if args.format in LAYOUT_FORMATS else "trl"
    file_type = args.file_type or (args.format if args.format in FILE_TYPES else "jsonl")
    data_path = args.out / f"{NOISY_DATA_STEM}.{file_type}"
    if layout_format == "same":
        layout, records = source_records(
            args.data, args.split, **parse_key_values(args.data_option, "--data-option")
        )
        flipped = record.table["is_flipped"].tolist()
        written.append(data_path)
        write_records(
            [swap_record_labels(row) if is_flipped else row for row, is_flipped in zip(records, flipped, strict=True)],
            data_path,
        )
        written_layout = f"the input's layout, {layout}"
    else:
        written.append(data_path)
        write_preferences(noisy, data_path)
        written_layout = "TRL's preference format"
    written.append(args.out / FLIP_TABLE_NAME)
    record.to_csv(args.out / FLIP_TABLE_NAME)
    summary = {"data": str(args.data), "split": args.split, **record.summary()}
    written.append(args.out / FLIP_SUMMARY_NAME)
    (args.out / FLIP_SUMMARY_NAME).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(
        f"{args.model} noise, seed {args.seed}: flipped {record.num_flipped} of {record.num_pairs} pairs, "
        f"realised rate {record.realised_rate:.4f} (target {args.rate})"
    )
    if record.identical_pairs:
        print(
            f"{record.identical_pairs} pair(s) have chosen equal to rejected: flipping them changes nothing"
        )
    print(
        f"wrote {data_path} ({written_layout}), {args.out / FLIP_TABLE_NAME} and {args.out / FLIP_SUMMARY_NAME}"
    )
    warning = realised_rate_warning(record)
    if warning:
        print(f"noisypref noise: warning: {warning}", file=sys.stderr)
    return 0


def check_earlier_output(out: Path, force: bool) -> None:
    """Refuse, unless `force`, an output folder that holds the files of an earlier `noisypref noise`."""
    names = [f"{NOISY_DATA_STEM}.jsonl", f"{NOISY_DATA_STEM}.parquet", FLIP_TABLE_NAME, FLIP_SUMMARY_NAME]
    earlier = [str(out / name) for name in names if (out / name).exists()]
    if earlier and not force:
        raise UserError(
            f"--out {out} holds the output of an earlier run ({', '.join(earlier)}); choose another folder, "
            "or pass --force to overwrite it"
        )


def parse_key_values(pairs: list[str], flag: str) -> dict[str, Any]:
    """KEY=VALUE strings to a dict; VALUE is read as JSON where it parses, else kept as text."""
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, separator, text = pair.partition("=")
        if not separator or not key:
            raise ValueError(f"{flag} {pair!r} is not of the form KEY=VALUE")
        try:
            parsed[key] = json.loads(text)
        except json.JSONDecodeError:
            parsed[key] = text
    return parsed


def describe_noise_models() -> str:
    from noisypref.noise_injection import NOISE_MODELS

    lines = []
    for name in sorted(NOISE_MODELS):
        noise_model = NOISE_MODELS[name]
        lines.append(f"{name}: {noise_model.description}")
        for option, default, help_text in noise_model.option_help():
            lines.append(f"    {option} (default {default!r}): {help_text}")
        if not noise_model.option_help():
            lines.append("    (no options)")
    return "\n".join(lines)
