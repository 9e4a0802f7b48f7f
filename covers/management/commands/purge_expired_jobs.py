"""`python manage.py purge_expired_jobs [--dry-run]`: the periodic cleanup, by hand.

Deletes the files of jobs finished more than COVER_RESULT_TTL_HOURS ago (rows stay, marked
expired) and orphan files older than the TTL; records the run (not with --dry-run, which
only lists what would be deleted and changes nothing)."""
from __future__ import annotations

from django.core.management.base import BaseCommand

from covers.cleanup import cleanup_run


class Command(BaseCommand):
    help = "Delete the files of expired cover jobs and orphan files (see COVER_RESULT_TTL_HOURS)."

    def add_arguments(self, parser):
        parser.add_argument("--dry-run", action="store_true", help="list what would be deleted; change nothing")

    def handle(self, *args, dry_run: bool = False, **opts):
        run = cleanup_run(trigger="command", dry_run=dry_run)
        if dry_run or opts.get("verbosity", 1) >= 2:
            for name in run.deleted:
                self.stdout.write(("would delete " if dry_run else "deleted ") + name)
        verb = "would expire" if dry_run else "expired"
        self.stdout.write(f"{verb} {run.jobs_expired} jobs; {run.files_deleted} job files and "
                          f"{run.orphans_deleted} orphan files, {run.stem_cache_expired} stem cache entries, "
                          f"{run.bytes_freed} bytes"
                          + (f"; {len(run.errors)} errors" if run.errors else ""))
        for err in run.errors:
            self.stderr.write(f"error: {err}")
