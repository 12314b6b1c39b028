"""Benchmark: the operator console's pages on a database with a million runs and deliveries.

The pages are requested through Django's test client (the whole middleware stack, templates
rendered) as a logged-in superuser, in this process, with afhost's production settings
(`DEBUG=0`) on PostgreSQL. The database is filled by `manage.py generate_console_data`
(1,000,000 runs, 1,000,000 deliveries with their attempts, ages over a week).

The URLs are found, not written down: the admin change lists of delivery.DeliveryTask and
afhost.Run from the admin's registry; the delivery filters as the change list's own sidebar
links them (status failed, overdue, more than 3 attempts, a channel); the dashboard and its JSON
from `delivery/urls.py` (the `delivery:dashboard` / `delivery:dashboard_json` names, or any URL
named like a dashboard). A page that is not there is reported as missing, not timed.

Each page is requested once to warm up (its first time is shown), then `--repeat` times; the
median and the maximum are reported against the goal (300 ms), with the page's queries (count,
time in the database, the slowest one). `--explain` prints EXPLAIN (ANALYZE, BUFFERS) of the
slowest query of every page over the goal.

    .venv/bin/python bench/console_bench.py [--database-url postgresql://...] [--reuse-database]
        [--runs 1000000] [--deliveries 1000000] [--repeat 5] [--explain]

This is a benchmark, not a test: it exits 0 whatever the figures (2 when it could not measure,
130 when interrupted). See bench/README.md.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import platform
import re
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATABASE = "postgresql://afhost:afhost@127.0.0.1:5432/afhost_consolebench"
GOAL_MS = 300.0
GENERATED_MARK = "generated:"  # generate_console_data's idempotency keys


@dataclass
class Page:
    name: str
    url: str = ""
    note: str = ""  # how the URL was found, or why it is missing
    status: int = 0
    first_ms: float = 0.0
    times_ms: list[float] = field(default_factory=list)
    queries: int = 0
    sql_ms: float = 0.0
    slowest_sql_ms: float = 0.0
    slowest_sql: str = ""
    check: str = ""  # e.g. "found" for a search that must find its object
    explain: str = ""

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times_ms) if self.times_ms else float("nan")

    @property
    def max_ms(self) -> float:
        return max(self.times_ms) if self.times_ms else float("nan")

    @property
    def verdict(self) -> str:
        if not self.url:
            return "MISSING"
        if self.status != 200 or self.check.startswith("NOT"):
            return "FAIL"
        return "PASS" if self.median_ms < GOAL_MS else "FAIL"


# --- setting up ---


def prepare_database(args) -> str:
    """The database URL to use: a fresh one next to the named one (dropped at the end), or
    the named one itself with --reuse-database."""
    from bench import responses_bench as rb

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return rb.prepare_postgres(args.database_url, env, reuse=args.reuse_database)


def setup_django(database_url: str) -> None:
    os.environ.update(
        DATABASE_URL=database_url,
        DEBUG="0",  # as in production (templates cached, no debug cursor)
        SECRET_KEY="bench",  # noqa: S106 (a bench's key)
        ALLOWED_HOSTS="testserver,127.0.0.1,localhost",
        LOG_LEVEL="WARNING",
        DJANGO_SETTINGS_MODULE="afhost.settings",
    )
    import django

    django.setup()


def fill(args) -> None:
    """Migrate, then generate the data unless the database already holds enough of it."""
    from django.core.management import call_command

    from afhost.models import Run
    from bench.responses_bench import BenchError
    from delivery.models import DeliveryTask

    call_command("migrate", verbosity=0)
    # Never write into a database someone else fills: only generated rows may be there.
    foreign_runs = Run.objects.exclude(metadata__generated="console").exists()
    foreign = (
        foreign_runs
        or DeliveryTask.objects.exclude(idempotency_key__startswith=GENERATED_MARK).exists()
    )
    if foreign:
        raise BenchError(
            "the database holds runs or deliveries that generate_console_data did not make: "
            "not a console bench database; name one of its own (--database-url)"
        )
    runs = Run.objects.filter(metadata__generated="console").count()
    deliveries = DeliveryTask.objects.filter(idempotency_key__startswith=GENERATED_MARK).count()
    if runs >= args.runs and deliveries >= args.deliveries:
        print(f"- the database already holds {runs} generated runs and {deliveries} deliveries")
        return
    if runs or deliveries:
        print(
            f"- the database holds {runs} generated runs and {deliveries} deliveries, fewer "
            "than asked: adding the full amount again"
        )
    print(
        f"- generating {args.runs} runs and {args.deliveries} deliveries "
        "(manage.py generate_console_data) ...",
        flush=True,
    )
    t0 = time.monotonic()
    call_command(
        "generate_console_data", runs=args.runs, deliveries=args.deliveries, stdout=sys.stdout
    )
    print(f"  generated in {time.monotonic() - t0:.0f}s", flush=True)


def superuser():
    from django.contrib.auth import get_user_model

    User = get_user_model()  # noqa: N806
    user = User.objects.filter(username="console-bench").first()
    if user is None:
        user = User.objects.create_superuser("console-bench", "bench@example.com", None)
    return user


# --- finding the pages ---


def admin_url(model, view: str, *args) -> str | None:
    from django.contrib import admin
    from django.urls import NoReverseMatch, reverse

    if model not in admin.site._registry:
        return None
    meta = model._meta
    try:
        return reverse(f"admin:{meta.app_label}_{meta.model_name}_{view}", args=args)
    except NoReverseMatch:
        return None


def named_url(*names: str, like: str = "") -> tuple[str | None, str]:
    """The first of the URL names that reverses; else a URL whose name contains `like`."""
    from django.urls import NoReverseMatch, get_resolver, reverse

    for name in names:
        try:
            return reverse(name), f"URL name {name}"
        except NoReverseMatch:
            continue
    if like:
        resolver = get_resolver()
        for key in resolver.reverse_dict.keys():
            if isinstance(key, str) and like in key:
                try:
                    return reverse(key), f"URL name {key} (matched {like!r})"
                except NoReverseMatch:
                    continue
        for namespace, (_, sub) in resolver.namespace_dict.items():
            for key in sub.reverse_dict.keys():
                if isinstance(key, str) and like in key:
                    try:
                        return reverse(f"{namespace}:{key}"), f"URL name {namespace}:{key}"
                    except NoReverseMatch:
                        continue
    return None, "no URL named " + " or ".join(names)


HREF = re.compile(r'href="(\?[^"]*)"')


def filter_links(page_html: str) -> list[dict[str, str]]:
    """The query strings the change list links to (its filters), parsed."""
    return [dict(parse_qsl(html.unescape(m.group(1))[1:])) for m in HREF.finditer(page_html)]


def pick_filter(links: list[dict[str, str]], key: str, value: str | None) -> dict | None:
    """The link that sets a parameter named like `key` (to `value`, if given), and nothing
    else besides the list's own parameters."""
    for query in links:
        for name, got in query.items():
            base = name.split("__")[0]
            if (name == key or base == key or key in name) and (value is None or got == value):
                return query
    return None


def with_query(url: str, query: dict[str, str]) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(query=urlencode(query)))


def discover(client) -> list[Page]:
    from afhost.models import Run
    from delivery.models import DeliveryTask

    pages: list[Page] = []
    deliveries = admin_url(DeliveryTask, "changelist")
    if deliveries is None:
        missing = "delivery.DeliveryTask is not in the admin"
        for name in (
            "deliveries",
            "deliveries: failed",
            "deliveries: overdue",
            "deliveries: attempts > 3",
            "deliveries: channel",
            "deliveries: search resp_",
            "delivery detail",
        ):
            pages.append(Page(name, note=missing))
    else:
        pages.append(Page("deliveries", deliveries, "admin changelist"))
        response = client.get(deliveries)
        links = filter_links(response.content.decode(errors="replace"))
        for name, key, value in (
            ("deliveries: failed", "status", "failed"),
            ("deliveries: overdue", "overdue", None),
            ("deliveries: attempts > 3", "attempt", "3"),
            ("deliveries: channel", "channel", "telegram"),
        ):
            query = pick_filter(links, key, value)
            if query is None:
                pages.append(Page(name, note=f"no sidebar link sets {key}={value or '...'}"))
            else:
                pages.append(Page(name, with_query(deliveries, query), f"sidebar link {query}"))
        task = sample_delivery()
        if task is not None:
            resp_id = "resp_" + task.run.public_id.hex
            search = Page(
                "deliveries: search resp_", with_query(deliveries, {"q": resp_id}), "?q=resp_..."
            )
            search.check = resp_id
            pages.append(search)
            detail = admin_url(DeliveryTask, "change", task.pk)
            pages.append(Page("delivery detail", detail or "", "admin change page"))
    dashboard, how = named_url("delivery:dashboard", like="dashboard")
    pages.append(Page("delivery dashboard", dashboard or "", how))
    dashboard_json, how = named_url("delivery:dashboard_json", like="dashboard_json")
    pages.append(Page("delivery dashboard JSON", dashboard_json or "", how))
    runs = admin_url(Run, "changelist")
    if runs is None:
        pages.append(Page("runs", note="afhost.Run is not in the admin"))
    else:
        pages.append(Page("runs", runs, "admin changelist"))
        run = sample_run()
        if run is not None:
            resp_id = "resp_" + run.public_id.hex
            search = Page("runs: search resp_", with_query(runs, {"q": resp_id}), "?q=resp_...")
            search.check = resp_id
            pages.append(search)
            detail = admin_url(Run, "change", run.pk)
            pages.append(Page("run detail", detail or "", "admin change page"))
    return pages


def sample_delivery():
    """A generated delivery at a random place in the table (not the newest: no cache luck)."""
    import random

    from django.db.models import Max, Min

    from delivery.models import DeliveryTask

    bounds = DeliveryTask.objects.aggregate(low=Min("pk"), high=Max("pk"))
    if bounds["low"] is None:
        return None
    pivot = random.randint(bounds["low"], bounds["high"])  # noqa: S311
    return DeliveryTask.objects.select_related("run").filter(pk__gte=pivot).order_by("pk").first()


def sample_run():
    import random

    from django.db.models import Max, Min

    from afhost.models import Run

    bounds = Run.objects.aggregate(low=Min("pk"), high=Max("pk"))
    if bounds["low"] is None:
        return None
    pivot = random.randint(bounds["low"], bounds["high"])  # noqa: S311
    return Run.objects.filter(pk__gte=pivot).order_by("pk").first()


# --- timing ---


def measure(client, page: Page, repeat: int, explain: bool) -> None:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    t0 = time.perf_counter()
    response = client.get(page.url)
    page.first_ms = (time.perf_counter() - t0) * 1e3
    page.status = response.status_code
    body = response.content.decode(errors="replace")
    if page.check:
        page.check = "found" if page.check in body else f"NOT found ({page.check})"
    for _ in range(repeat):
        t0 = time.perf_counter()
        client.get(page.url)
        page.times_ms.append((time.perf_counter() - t0) * 1e3)
    # Once more, with the queries recorded (not timed: recording costs time of its own).
    with CaptureQueriesContext(connection) as captured:
        client.get(page.url)
    queries = [q for q in captured.captured_queries if not q["sql"].startswith("SAVEPOINT")]
    page.queries = len(queries)
    page.sql_ms = sum(float(q["time"]) for q in queries) * 1e3
    if queries:
        slowest = max(queries, key=lambda q: float(q["time"]))
        page.slowest_sql_ms = float(slowest["time"]) * 1e3
        page.slowest_sql = " ".join(slowest["sql"].split())
        if explain and page.median_ms >= GOAL_MS:
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + slowest["sql"])
                page.explain = "\n".join(row[0] for row in cursor.fetchall())


# --- report ---


def report(pages: list[Page], args, database: str) -> None:
    print()
    print(
        f"console bench: {database}, {args.repeat} requests per page after one warm-up, "
        f"goal: median < {GOAL_MS:g} ms"
    )
    print("| page | first ms | median ms | max ms | queries | SQL ms | slowest query ms | goal |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
    for p in pages:
        if not p.url:
            print(f"| {p.name} | | | | | | | MISSING: {p.note} |")
            continue
        status = "" if p.status == 200 else f" (HTTP {p.status})"
        check = f" ({p.check})" if p.check and p.check != "found" else ""
        print(
            f"| {p.name} | {p.first_ms:.0f} | {p.median_ms:.0f} | {p.max_ms:.0f} | {p.queries} | "
            f"{p.sql_ms:.0f} | {p.slowest_sql_ms:.0f} | {p.verdict}{status}{check} |"
        )
    print()
    for p in pages:
        if p.url:
            print(f"{p.name}: GET {p.url}  [{p.note}]")
            slow = p.verdict != "PASS" or p.slowest_sql_ms >= GOAL_MS / 3
            if p.slowest_sql and (slow or args.verbose):
                print(f"  slowest query ({p.slowest_sql_ms:.0f} ms): {p.slowest_sql[:400]}")
            if p.explain:
                print("  " + p.explain.replace("\n", "\n  "))


def counts() -> dict[str, int]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT relname, reltuples::bigint FROM pg_class WHERE relname IN "
            "('afhost_run', 'delivery_deliverytask', 'delivery_deliveryattempt', "
            "'linking_identity')"
        )
        return dict(cursor.fetchall())


# --- main ---


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--database-url",
        default=DEFAULT_DATABASE,
        help="a postgres:// URL on this machine: a fresh database is created next to the one "
        "named, filled, and dropped at the end (unless --reuse-database)",
    )
    parser.add_argument(
        "--reuse-database",
        action="store_true",
        help="use the named database as it is (created if missing, filled if it holds fewer "
        "generated rows than asked), and keep it: later runs skip the ~2 min of generating",
    )
    parser.add_argument("--runs", type=int, default=1_000_000)
    parser.add_argument("--deliveries", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5, help="timed requests per page")
    parser.add_argument(
        "--explain", action="store_true", help="EXPLAIN ANALYZE the slowest query of slow pages"
    )
    parser.add_argument("--verbose", action="store_true", help="show every page's slowest query")
    parser.add_argument("--json", metavar="OUT", help="also write the figures as JSON here")
    args = parser.parse_args(argv)
    parts = urlsplit(args.database_url)
    if not parts.scheme.startswith("postgres") or parts.hostname not in (
        "127.0.0.1",
        "localhost",
        "::1",
    ):
        parser.error("--database-url must be a postgres:// URL on this machine")
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")

    from bench import responses_bench as rb

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, rb._raise_interrupt)
    print(
        f"console bench: {args.runs} runs, {args.deliveries} deliveries; "
        f"{platform.python_implementation()} {platform.python_version()}, {os.cpu_count()} CPUs; "
        f"load {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    started = time.monotonic()
    pages: list[Page] = []
    database = ""
    try:
        url = prepare_database(args)
        database = urlsplit(url).path.lstrip("/")
        setup_django(url)
        fill(args)
        from django.db import connections
        from django.test import Client

        client = Client()
        client.force_login(superuser())
        pages = discover(client)
        for page in pages:
            if page.url:
                print(f"- {page.name}: {page.url}", flush=True)
                measure(client, page, args.repeat, args.explain)
        sizes = counts()
        connections.close_all()
    except Exception as exc:  # the bench could not measure: say why, clean up, exit 2
        import traceback

        traceback.print_exc()
        print(f"\nbench aborted: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    finally:
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: S110 (Django may not be set up yet)
            pass
        rb.clean_up(Path("/nonexistent-console-bench"))
    report(pages, args, f"{database} ({', '.join(f'{k} ~{v:,}' for k, v in sizes.items())})")
    print(f"(total {time.monotonic() - started:.0f}s)")
    if args.json:
        out = {
            "database": database,
            "rows": sizes,
            "pages": [
                {**asdict(p), "median_ms": p.median_ms, "max_ms": p.max_ms, "verdict": p.verdict}
                for p in pages
            ],
        }
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
