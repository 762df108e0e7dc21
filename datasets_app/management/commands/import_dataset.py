"""Import a file as a user's dataset and prepare it here and now, as upload + task would.

    python manage.py import_dataset --user alice@example.com survey.csv --name "Survey 2023"
    python manage.py import_dataset --user alice@example.com chats.jsonl --json

Exit status 0 when the dataset is ready, 1 (with the reason) when it is not.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.files import File
from django.core.management.base import BaseCommand, CommandError, CommandParser

from datasets_app import actions
from datasets_app.mapping import MappingError, parse_mapping
from datasets_app.models import Dataset


class Command(BaseCommand):
    help = "Import a CSV/TSV/JSON/JSONL/TXT file (optionally .gz) as a user's dataset and prepare it."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", type=Path, help="the file to import")
        parser.add_argument("--user", required=True, help="the owner's email address")
        parser.add_argument("--name", default="", help="dataset name (default: the file's name)")
        parser.add_argument(
            "--format", default="auto", choices=["auto", *[c for c in Dataset.Format.values if c != "auto"]]
        )
        parser.add_argument("--txt-mode", default="line", choices=Dataset.TxtMode.values)
        parser.add_argument(
            "--mapping",
            default="",
            help="all-columns | text:COLUMN | prompt:COLUMN,completion:COLUMN | template:TEMPLATE | messages "
            "(default: automatic)",
        )
        parser.add_argument(
            "--validation",
            type=float,
            default=5.0,
            help="percent of samples held out for validation (default 5)",
        )
        parser.add_argument("--json", action="store_true", help="print one JSON object instead of text")

    def handle(self, *args, **options) -> None:
        path: Path = options["path"]
        if not path.is_file():
            raise CommandError(f"{path} is not a file")
        try:
            parse_mapping(options["mapping"])
        except MappingError as exc:
            raise CommandError(str(exc)) from None
        if not 0 <= options["validation"] <= 50:
            raise CommandError("--validation must be between 0 and 50 (percent)")
        owner = self.find_user(options["user"])
        read = actions.ReadOptions(
            format=options["format"],
            txt_mode=options["txt_mode"],
            mapping=options["mapping"],
            validation_fraction=options["validation"] / 100,
        )
        dataset, error = self.import_file(owner, path, read, options["name"])
        summary = self.summary(dataset, error)
        if options["json"]:
            self.stdout.write(json.dumps(summary, ensure_ascii=False))
        else:
            self.print_summary(summary)
        if summary["status"] != Dataset.Status.READY:
            raise CommandError(summary["error"] or "the dataset is not ready", returncode=1)

    def find_user(self, email: str):
        users = get_user_model().objects.filter(email__iexact=email.strip())
        if users.count() != 1:
            raise CommandError(f"no single user has the email address {email!r}")
        return users.get()

    def import_file(
        self, owner, path: Path, read: actions.ReadOptions, name: str
    ) -> tuple[Dataset | None, str]:
        """Store the file and prepare it in this process; returns the dataset (if made) and an error."""
        with open(path, "rb") as handle:
            try:
                dataset = actions.create_dataset(owner, File(handle), path.name, read, name=name, queue=False)
            except actions.PreparationError as exc:
                return None, str(exc)
        self.stderr.write(f"Preparing “{dataset.name}” (id {dataset.pk})…")
        actions.run_preparation(dataset.pk, on_progress=self.show_progress)
        dataset.refresh_from_db()
        return dataset, dataset.error

    def show_progress(self, rows: int) -> None:
        self.stderr.write(f"  {rows:,} rows read…")

    @staticmethod
    def summary(dataset: Dataset | None, error: str) -> dict:
        stats = dataset.stats if dataset else {}
        return {
            "id": dataset.pk if dataset else None,
            "name": dataset.name if dataset else None,
            "status": dataset.status if dataset else Dataset.Status.FAILED,
            "format": stats.get("format"),
            "encoding": stats.get("encoding"),
            "mapping": stats.get("mapping"),
            "rows": stats.get("rows", 0),
            "samples": stats.get("samples", 0),
            "train_samples": stats.get("train_samples", 0),
            "validation_samples": stats.get("validation_samples", 0),
            "rejected": stats.get("rejected", 0),
            "rejected_examples": stats.get("rejected_examples", []),
            "tokens": stats.get("tokens", 0),
            "characters": stats.get("characters", 0),
            "encoding_note": stats.get("encoding_note", ""),
            "seconds": stats.get("seconds"),
            "error": error,
        }

    def print_summary(self, summary: dict) -> None:
        if summary["status"] != Dataset.Status.READY:
            return  # the reason goes to stderr through CommandError
        self.stdout.write(
            self.style.SUCCESS(f"Dataset {summary['id']} “{summary['name']}” is ready.")
            + f"\n  read as {summary['format']} ({summary['encoding']}), mapping {summary['mapping']}"
            + f"\n  rows {summary['rows']:,} · samples {summary['samples']:,} "
            f"({summary['train_samples']:,} training, {summary['validation_samples']:,} validation)"
            + f" · rejected {summary['rejected']:,}"
            + f"\n  tokens {summary['tokens']:,} · characters {summary['characters']:,}"
            + f" · {summary['seconds']} s"
        )
        for example in summary["rejected_examples"][:5]:
            self.stdout.write(f"  rejected line {example['line']}: {example['reason']}")
        if summary["encoding_note"]:
            self.stdout.write(self.style.WARNING(f"  {summary['encoding_note']}"))
