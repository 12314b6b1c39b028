from django.core.management.base import BaseCommand
from django_q.models import Schedule

# Every periodic task, declared once. Run on every deploy; running it again changes nothing.
# Recovering lost work needs no schedule: each worker's engine runs the sweepers every third
# of a lease (afhost/engine.py), far more often than a schedule can.
SCHEDULES: list[dict] = []
# Schedules earlier versions declared; removed, since their tasks no longer exist.
RETIRED = ["afhost.sweep_runs", "channels_app.sweep_telegram_updates"]


class Command(BaseCommand):
    help = "Create or update the django-q2 schedules afhost needs (idempotent)."

    def handle(self, *args, **options):
        for spec in SCHEDULES:
            fields = {key: value for key, value in spec.items() if key != "name"}
            _, created = Schedule.objects.update_or_create(name=spec["name"], defaults=fields)
            self.stdout.write(f"{'Created' if created else 'Updated'} schedule {spec['name']}")
        removed, _ = Schedule.objects.filter(name__in=RETIRED).delete()
        if removed:
            self.stdout.write(f"Removed {removed} retired schedule(s)")
